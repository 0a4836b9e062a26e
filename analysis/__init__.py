"""What the runs mean: load run directories (or W&B runs), group them, test differences, plot, report."""
