from engines.backends.base import BACKENDS, Backend, BackendUnavailable, backend_class, load_backend

__all__ = ["BACKENDS", "Backend", "BackendUnavailable", "backend_class", "load_backend"]
