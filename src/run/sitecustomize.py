# oomdoc --snapshot-on-oom: loaded by Python at start-up through PYTHONPATH (site.py imports
# `sitecustomize`). It does nothing until the program imports torch; then, in the main process
# only, it records the CUDA allocator's history and, on the first out-of-memory error, writes a
# memory snapshot (torch.cuda.memory._snapshot(), the format of _dump_snapshot) into
# $OOMDOC_SNAPSHOT_DIR and says where on stderr. Any other sitecustomize on the path still runs.
import os
import sys


def _oomdoc_chain():
    # Run the sitecustomize this file shadows (e.g. a distribution's), if there is one.
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == os.path.abspath(__file__):
        return
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)


def _oomdoc_arm(torch):
    import multiprocessing

    # DataLoader workers and other children re-import torch: only the main process records.
    if multiprocessing.current_process().name != "MainProcess":
        return
    out_dir = os.environ.get("OOMDOC_SNAPSHOT_DIR") or "."
    max_entries = int(os.environ.get("OOMDOC_SNAPSHOT_MAX_ENTRIES") or 100000)
    state = {"done": False}

    def dump(reason):
        if state["done"]:
            return
        state["done"] = True
        path = os.path.join(out_dir, "oomdoc-oom-%d.pickle" % os.getpid())
        try:
            import pickle

            snap = torch.cuda.memory._snapshot()
            with open(path, "wb") as f:
                pickle.dump(snap, f)
            sys.stderr.write("oomdoc: memory snapshot at the OOM written to %s (%s)\n" % (path, reason))
        except Exception as e:  # never make the user's failure worse
            sys.stderr.write("oomdoc: could not write a memory snapshot: %r\n" % (e,))
        sys.stderr.flush()

    try:
        if not torch.cuda.is_available():
            return
    except Exception:
        return
    try:
        # torch >= 2.1 signature; stacks="python" keeps the overhead low.
        torch.cuda.memory._record_memory_history(max_entries=max_entries, stacks="python")
    except TypeError:
        try:
            torch.cuda.memory._record_memory_history(True)  # 1.13 / 2.0
        except Exception:
            return
    except Exception:
        return
    # Called by the caching allocator before it raises, so the snapshot has the OOM in its trace.
    observer = getattr(torch._C, "_cuda_attach_out_of_memory_observer", None)
    if observer is not None:
        try:
            observer(lambda device, alloc, device_alloc, device_free: dump("allocator OOM observer"))
        except Exception:
            pass
    # Fallback for OOMs the observer does not see (and old versions): an uncaught OutOfMemoryError.
    oom_types = tuple(
        t
        for t in (getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None))
        if isinstance(t, type)
    )
    previous = sys.excepthook

    def hook(kind, value, tb):
        if oom_types and issubclass(kind, oom_types):
            dump("uncaught OutOfMemoryError")
        previous(kind, value, tb)

    sys.excepthook = hook


class _OomdocTorchFinder:
    # Waits for `import torch` and arms the hook once torch has finished loading.
    def find_spec(self, name, path=None, target=None):
        if name != "torch":
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec("torch")
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module):
            original(module)
            try:
                _oomdoc_arm(module)
            except Exception as e:
                sys.stderr.write("oomdoc: snapshot hook not armed: %r\n" % (e,))

        loader.exec_module = exec_module
        return spec


try:
    _oomdoc_chain()
except Exception:
    pass
if "torch" in sys.modules:
    _oomdoc_arm(sys.modules["torch"])
else:
    sys.meta_path.insert(0, _OomdocTorchFinder())
