"""Stage 7, `report`: Markdown, JSON and HTML reports and the per-answer dashboards."""
