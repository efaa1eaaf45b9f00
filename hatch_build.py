"""Hatchling build hook: compile the native relay engine (src/restcp/engine/_relay.pyx).

Cython (a build requirement, from PyPI) turns the .pyx into C; the C compiler that built this
Python (Debian's ``gcc``) turns that into an extension module beside the .pyx, where both the
editable install (a .pth onto src/) and a wheel find it. A machine without a compiler still
installs restcp: the build says which apt package is missing and restcp runs on its asyncio
data plane (``restcp serve --engine native`` then falls back with a warning).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

ENGINE = Path("src/restcp/engine")
MODULE = "_relay"


class EngineBuild(BuildHookInterface):  # type: ignore[type-arg]
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        root = Path(self.root)
        built = build(root)
        if built is None:
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(built)] = str(built.relative_to(root / "src"))


def compiler() -> list[str] | None:
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    argv = shlex.split(cc)
    return argv if argv and shutil.which(argv[0]) else None


def build(root: Path) -> Path | None:
    """Compile the engine in place; None (with a message) where no C compiler is found."""
    from Cython.Compiler.Main import CompilationOptions, compile_single

    source = root / ENGINE / f"{MODULE}.pyx"
    target = source.with_name(MODULE + sysconfig.get_config_var("EXT_SUFFIX"))
    cc = compiler()
    if cc is None:
        print(
            "restcp: no C compiler found (install Debian's gcc: apt-get install gcc); "
            "building without the native engine, restcp will use its asyncio data plane",
            file=sys.stderr,
        )
        return None
    c_file = source.with_suffix(".c")
    options = CompilationOptions(language_level=3, output_file=str(c_file))
    result = compile_single(str(source), options, full_module_name=f"restcp.engine.{MODULE}")
    if result.num_errors:
        raise RuntimeError(f"cython failed on {source}")
    include = sysconfig.get_paths()["include"]
    cflags = shlex.split(sysconfig.get_config_var("CFLAGS") or "")
    command = [
        *cc,
        *cflags,
        "-O2",
        "-fPIC",
        "-shared",
        f"-I{include}",
        str(c_file),
        "-o",
        str(target),
    ]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        missing = "python3-dev" if "Python.h" in done.stderr else "gcc and libc6-dev"
        raise RuntimeError(
            f"compiling the native engine failed (apt-get install {missing}?):\n{done.stderr}"
        )
    return target
