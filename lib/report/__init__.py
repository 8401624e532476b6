"""Everything written from a results table: summary_report.txt, report.md/.html, graphs,
statistics over seeds, and the comparison of two directories.
"""
