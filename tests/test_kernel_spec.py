"""The specification as a test: tests/cpp/test_kernels.cpp checks every KernelTable entry of
every ISA this machine runs against scalar.h at odd sizes (built warning-clean, then once more
under AddressSanitizer and UBSan), and tests/cpp/check_binding.py calls every entry of the
compiled module on every storage type and metric form against a float64 NumPy reference."""

from __future__ import annotations

import importlib.util
import pathlib
import shutil
import subprocess

import pytest

import splitnet_kernels as sk

HERE = pathlib.Path(__file__).resolve().parent
SPEC = HERE / "cpp" / "test_kernels.cpp"
BINDING_CHECK = HERE / "cpp" / "check_binding.py"


def _compiler() -> str:
    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or c++) on PATH")
    return compiler


def _build_and_run(tmp_path, *flags):
    binary = tmp_path / "test_kernels"
    command = [_compiler(), "-std=c++17", *flags, f"-I{sk.get_include()}", str(SPEC), "-pthread", "-o", str(binary)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(command)} failed:\n{done.stderr}"
    done = subprocess.run([str(binary)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    for isa in sk.info()["isa_supported"]:
        assert f"{isa}: checked" in done.stdout, done.stdout
    assert done.stdout.rstrip().endswith("0 failed"), done.stdout
    return done.stdout


def test_every_table_entry_matches_the_scalar_reference(tmp_path):
    _build_and_run(tmp_path, "-O2", "-Wall", "-Wextra", "-Werror")


def test_the_specification_under_sanitizers(tmp_path):
    probe = subprocess.run([_compiler(), "-fsanitize=address,undefined", "-x", "c++", "-", "-o", str(tmp_path / "probe")],
                           input="int main() { return 0; }", capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("this compiler cannot link AddressSanitizer / UBSan")
    _build_and_run(tmp_path, "-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                   "-fno-omit-frame-pointer")


def test_every_binding_entry_on_every_dtype_and_form():
    if not sk.info()["isa_supported"]:
        pytest.skip("the compiled module is not loaded")
    spec = importlib.util.spec_from_file_location("check_binding", BINDING_CHECK)
    check_binding = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_binding)
    previous = sk.info()["isa_active"]
    try:
        for isa in sk.info()["isa_supported"]:
            sk.set_isa(isa)
            assert check_binding.check(seed=3) > 0
        assert check_binding.check_errors() > 0
    finally:
        sk.set_isa(previous)
