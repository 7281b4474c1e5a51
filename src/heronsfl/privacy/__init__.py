"""What the main server can learn from the uploads, and defenses against it.

- defenses.py: noise and clipping on the uploaded activations, the NoPeek penalty (used by the
  algorithms while training; imports nothing from the engines).
- inversion.py: decoder and architecture-only (UnSplit) reconstruction of inputs from activations.
- labels.py: which algorithms upload labels, and label inference from returned gradients.
- attack.py: `heronsfl attack inversion RUN_DIR`: all of the above on a run directory.
"""
