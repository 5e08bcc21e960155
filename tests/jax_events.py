"""Which JAX events (compiles, compilation-cache reads) a block of code caused."""
import contextlib

import jax


@contextlib.contextmanager
def jax_events():
    """Yields the list of jax.monitoring duration events recorded while the block runs."""
    events = []
    listener = lambda event, seconds, **kw: events.append(event)  # noqa: E731
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
