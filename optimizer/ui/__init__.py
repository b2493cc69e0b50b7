"""What people see: console tables and progress, the HTML report."""
