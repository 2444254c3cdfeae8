"""Entry points beside the pipeline: the run planner, the notebook API and the scoring CLI."""
