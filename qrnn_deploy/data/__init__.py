"""Training and evaluation data (pure Python): the German-English dictionary of `trans-de-en`."""
