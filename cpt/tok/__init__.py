"""`cpt-tok`: extend a base tokenizer with pieces trained on a new language (Chinese-LLaMA, Ziya2)."""
