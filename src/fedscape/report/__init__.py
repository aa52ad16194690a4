"""The workflow's report: the headline tables over runs and seeds, the cost table and the figures that
cut across analyses (curves over rounds, final accuracy, cost); torch-free."""
