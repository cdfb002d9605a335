"""Reporting: tables and figures made from run results."""
