#!/usr/bin/env python3
"""Execute quantlab notebooks headlessly on the Deno Jupyter kernel.

Usage:
    python3 tools/run_notebooks.py [NOTEBOOK.ipynb | DIR ...] [--out-dir DIR]
        [--timeout 900] [--grace 2.0] [--kernel-name NAME] [--deno PATH]

With no paths it runs every ``notebooks/*.ipynb`` (sorted; names starting with "_" or "."
and the ``_executed`` folder are skipped). Each notebook runs in a fresh kernel whose working
directory is the notebook's folder, so ``../mod.ts`` and ``../../shared/data`` resolve as they
do in JupyterLab. The executed copy is written atomically to ``<notebook dir>/_executed/<name>``
(or ``--out-dir``), also when a cell fails, so the failure can be inspected.

Why not ``jupyter nbconvert --execute``: the Deno kernel often publishes ``status: idle``
*before* a cell's outputs (measured: every output of 1 MB or more, and even small
``execute_result``s, arrive after idle), and nbclient stops listening at idle, so outputs are
silently lost. This runner keeps draining IOPub after idle until the channel has been quiet for
``--grace`` seconds, and also attaches late messages to the cell whose request they answer.

Exit status: 0 when every notebook ran without an error output, 1 when a cell failed (the
notebook, cell number, source and traceback are printed), 2 for usage/setup problems.

The kernel is started from a private kernelspec (``deno jupyter --kernel --conn FILE``), so
``deno jupyter --install`` is not needed to run notebooks; pass ``--kernel-name deno`` to use
an installed spec instead. The Deno kernel grants all permissions (like ``-A``).

Needs Debian packages: python3-nbformat python3-jupyter-client (``apt-get install -y
jupyter-nbconvert python3-nbclient jupyter-client python3-ipykernel`` pulls them in).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import queue
import re
import shutil
import sys
import tempfile
import time

try:
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
except ImportError as e:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"run_notebooks: {e}\n"
        "install: apt-get install -y jupyter-nbconvert python3-nbclient jupyter-client "
        "python3-ipykernel\n"
    )
    sys.exit(2)

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PRIVATE_KERNEL = "quantlab-deno"


def log(msg: str) -> None:
    sys.stderr.write(msg + "\n")
    sys.stderr.flush()


def find_notebooks(paths: list[str], root: str) -> list[str]:
    """Expands folders to their notebooks; defaults to <root>/notebooks."""
    if not paths:
        paths = [os.path.join(root, "notebooks")]
    found: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            for name in sorted(os.listdir(p)):
                if name.endswith(".ipynb") and not name.startswith(("_", ".")):
                    found.append(os.path.join(p, name))
        elif os.path.isfile(p):
            found.append(p)
        else:
            log(f"run_notebooks: no such notebook or folder: {p}")
            sys.exit(2)
    return [os.path.abspath(f) for f in found]


def private_kernel_dir(deno: str, extra_args: list[str]) -> str:
    """Writes a kernelspec for `deno jupyter --kernel` into a temp folder; returns the folder."""
    tmp = tempfile.mkdtemp(prefix="quantlab-kernels-")
    spec_dir = os.path.join(tmp, PRIVATE_KERNEL)
    os.makedirs(spec_dir)
    spec = {
        "argv": [deno, "jupyter", "--kernel", *extra_args, "--conn", "{connection_file}"],
        "display_name": "Deno (quantlab runner)",
        "language": "typescript",
    }
    with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
        json.dump(spec, f)
    return tmp


class CellFailed(Exception):
    def __init__(self, index: int, source: str, text: str):
        super().__init__(text)
        self.index = index
        self.source = source
        self.text = text


class Runner:
    """Runs one notebook in one kernel, collecting outputs robustly."""

    def __init__(self, km: KernelManager, grace: float, timeout: float):
        self.km = km
        self.kc = km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=120)
        self.grace = grace
        self.timeout = timeout
        # msg_id of an execute request -> cell outputs list (for late messages)
        self.outputs_by_msg: dict[str, list] = {}
        # display_id -> list of (outputs list, output dict) to update in place
        self.displays: dict[str, list] = {}
        self.clear_pending: dict[str, bool] = {}

    def close(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            self.km.shutdown_kernel(now=True)

    def _append(self, outputs: list, out: dict, parent: str) -> None:
        if self.clear_pending.pop(parent, False):
            outputs.clear()
        # merge consecutive stream chunks of the same stream, as Jupyter does
        if (
            out["output_type"] == "stream"
            and outputs
            and outputs[-1]["output_type"] == "stream"
            and outputs[-1]["name"] == out["name"]
        ):
            outputs[-1]["text"] += out["text"]
            return
        outputs.append(out)

    def handle(self, msg: dict) -> str | None:
        """Applies one IOPub message; returns the parent msg_id when it changed some cell."""
        parent = msg.get("parent_header", {}).get("msg_id")
        mtype = msg["msg_type"]
        content = msg["content"]
        if mtype == "update_display_data":
            did = content.get("transient", {}).get("display_id")
            for _outs, out in self.displays.get(did, []):
                out["data"] = content.get("data", {})
                out["metadata"] = content.get("metadata", {})
            return parent
        outputs = self.outputs_by_msg.get(parent)
        if outputs is None:
            return None
        if mtype == "clear_output":
            if content.get("wait"):
                self.clear_pending[parent] = True
            else:
                outputs.clear()
            return parent
        if mtype in ("stream", "display_data", "execute_result", "error"):
            out = nbformat.v4.output_from_msg(msg)
            self._append(outputs, out, parent)
            did = content.get("transient", {}).get("display_id")
            if did and mtype in ("display_data", "execute_result"):
                self.displays.setdefault(did, []).append((outputs, out))
            return parent
        return parent

    def run_cell(self, index: int, cell: dict) -> float:
        cell["outputs"] = []
        msg_id = self.kc.execute(cell["source"], store_history=True, allow_stdin=False)
        self.outputs_by_msg[msg_id] = cell["outputs"]
        start = time.monotonic()
        deadline = start + self.timeout
        idle = False
        reply = None
        last = time.monotonic()
        while True:
            now = time.monotonic()
            if now > deadline:
                self.km.interrupt_kernel()
                raise CellFailed(index, cell["source"], f"timed out after {self.timeout:.0f} s")
            if reply is None:
                try:
                    r = self.kc.get_shell_msg(timeout=0.01)
                    if r["parent_header"].get("msg_id") == msg_id:
                        reply = r
                        last = time.monotonic()
                except queue.Empty:
                    pass
            if idle and reply is not None and now - last >= self.grace:
                break
            try:
                msg = self.kc.get_iopub_msg(timeout=0.05)
            except queue.Empty:
                continue
            last = time.monotonic()
            if self.handle(msg) != msg_id:
                continue
            if msg["msg_type"] == "execute_input":
                cell["execution_count"] = msg["content"].get("execution_count")
            elif msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                idle = True
        if reply["content"].get("execution_count") is not None:
            cell["execution_count"] = reply["content"]["execution_count"]
        for out in cell["outputs"]:
            if out["output_type"] == "execute_result":
                out["execution_count"] = cell["execution_count"]
        errors = [o for o in cell["outputs"] if o["output_type"] == "error"]
        if errors or reply["content"].get("status") == "error":
            if errors:
                text = "\n".join(
                    ANSI.sub("", "\n".join(e.get("traceback") or [f"{e['ename']}: {e['evalue']}"]))
                    for e in errors
                )
            else:
                c = reply["content"]
                text = ANSI.sub("", "\n".join(c.get("traceback") or [f"{c.get('ename')}: {c.get('evalue')}"]))
            raise CellFailed(index, cell["source"], text)
        return time.monotonic() - start


def write_atomic(nb, path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".ipynb", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_notebook(path: str, out_dir: str | None, args, ksm) -> bool:
    nb = nbformat.read(path, as_version=4)
    nbdir = os.path.dirname(path)
    out_path = os.path.join(out_dir or os.path.join(nbdir, "_executed"), os.path.basename(path))
    executed = copy.deepcopy(nb)
    km = KernelManager(kernel_name=args.kernel_name or PRIVATE_KERNEL, kernel_spec_manager=ksm)
    log(f"== {os.path.relpath(path)} (cwd {os.path.relpath(nbdir)})")
    t0 = time.monotonic()
    km.start_kernel(cwd=nbdir, env={**os.environ, "NO_COLOR": "1", "QUANTLAB_NOTEBOOK": "1"})
    runner = None
    ok = True
    try:
        runner = Runner(km, args.grace, args.timeout)
        n = 0
        for i, cell in enumerate(executed.cells):
            if cell.cell_type != "code" or not cell.source.strip():
                continue
            n += 1
            secs = runner.run_cell(i, cell)
            nbytes = len(json.dumps(cell["outputs"]))
            log(f"   cell {i:>2}: {secs:6.2f} s, {len(cell['outputs'])} output(s), {nbytes} bytes")
        log(f"   ok: {n} code cells in {time.monotonic() - t0:.1f} s -> {os.path.relpath(out_path)}")
    except CellFailed as e:
        ok = False
        log(f"FAILED {os.path.relpath(path)} cell {e.index}:")
        log("---- source ----")
        log(e.source)
        log("---- error ----")
        log(e.text)
        log("----")
    finally:
        if runner is not None:
            runner.close()
        else:
            km.shutdown_kernel(now=True)
    executed.metadata["kernelspec"] = {"name": "deno", "display_name": "Deno", "language": "typescript"}
    executed.metadata.setdefault("language_info", {"name": "typescript", "file_extension": ".ts"})
    executed.metadata["quantlab_runner"] = {"ok": ok, "seconds": round(time.monotonic() - t0, 2)}
    write_atomic(executed, out_path)
    return ok


def main() -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("paths", nargs="*", help="notebooks or folders (default: notebooks/)")
    ap.add_argument("--out-dir", help="where executed copies go (default: <nb dir>/_executed)")
    ap.add_argument("--timeout", type=float, default=900, help="per-cell timeout, seconds")
    ap.add_argument("--grace", type=float, default=2.0, help="quiet IOPub seconds after idle")
    ap.add_argument("--kernel-name", help="use an installed kernelspec (e.g. deno) instead")
    ap.add_argument("--deno", default=os.environ.get("DENO", shutil.which("deno") or "deno"))
    ap.add_argument("--keep-going", action="store_true", help="run all notebooks after a failure")
    args = ap.parse_args()
    notebooks = find_notebooks(args.paths, root)
    if not notebooks:
        log("run_notebooks: no notebooks found")
        return 2
    tmp = None
    if args.kernel_name:
        ksm = KernelSpecManager()
    else:
        tmp = private_kernel_dir(args.deno, [])
        ksm = KernelSpecManager(kernel_dirs=[tmp])
    failed = []
    try:
        for nb in notebooks:
            if not run_notebook(nb, args.out_dir, args, ksm):
                failed.append(nb)
                if not args.keep_going:
                    break
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    if failed:
        log(f"run_notebooks: {len(failed)} notebook(s) failed: " + ", ".join(map(os.path.relpath, failed)))
        return 1
    log(f"run_notebooks: {len(notebooks)} notebook(s) ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
