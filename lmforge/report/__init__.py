"""Run folders read back: what a run is and how far it got (runinfo), its report card (card), and
several runs side by side (compare). Files only, no model is loaded.

Layer: below lm and classify (which call it at the end of a run), above trainer.
"""
