"""The worker machinery both algorithms share: worker processes, Ray actors, timeouts and replacement."""
