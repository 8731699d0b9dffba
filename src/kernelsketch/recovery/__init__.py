"""Function recovery by leverage-score sampling."""
