"""What several evals share (no eval imports another eval's module; shared helpers live here):
context (the model, hook and activation cache), probes, packed token rows, pooled text
activations."""
