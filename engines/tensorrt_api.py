"""What the installed TensorRT offers, and the build plan that follows from it. Pure: tested without
a GPU against recorded descriptions of TensorRT 10 and 11 (``tests/data/tensorrt_api/``).

- TensorRT 10 builds weakly typed networks (precision flags such as ``BuilderFlag.FP16``, implicit
  INT8 calibration) and strongly typed ones (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``:
  every tensor's type comes from the graph).
- TensorRT 11 removed the precision flags, ``PREFER_PRECISION_CONSTRAINTS``, ``int8_calibrator`` and
  ``set_calibration_profile``: every network is strongly typed, fp16 must be in the ONNX graph and
  INT8 comes from Q/DQ nodes.

So both are built the same way: strongly typed, from an fp16 graph (``engines.fp16_onnx``) for
fp16 and from a Q/DQ graph (``quantize --target tensorrt``) for INT8. Only a TensorRT 10 asked for
INT8 on a plain fp32 folder takes the older implicit-calibration route.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The versions this code is written for (setup.cfg's extra says the same).
SUPPORTED_MAJORS = (10, 11)


@dataclass(frozen=True)
class TrtApi:
    version: str
    builder_flags: frozenset[str]
    network_flags: frozenset[str]
    config_attributes: frozenset[str]  # of IBuilderConfig, those this code may use

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def implicit_int8(self) -> bool:
        return {"INT8", "FP16"} <= self.builder_flags and {"int8_calibrator", "set_calibration_profile"} <= \
            self.config_attributes

    @classmethod
    def of(cls, trt) -> "TrtApi":
        """Read from the imported ``tensorrt`` module."""
        def members(enum) -> frozenset[str]:
            return frozenset(n for n in dir(enum) if n.isupper() and not n.startswith("_"))

        return cls(trt.__version__, members(trt.BuilderFlag), members(trt.NetworkDefinitionCreationFlag),
                   frozenset(n for n in dir(trt.IBuilderConfig) if not n.startswith("_")))

    @classmethod
    def load(cls, path: str | Path) -> "TrtApi":
        d = json.loads(Path(path).read_text())
        return cls(d["version"], frozenset(d["builder_flags"]), frozenset(d["network_flags"]),
                   frozenset(d["config_attributes"]))


@dataclass(frozen=True)
class BuildPlan:
    graph: str                  # the ONNX graph parsed: "fp32", "fp16" (converted here) or "qdq" (the folder's)
    strongly_typed: bool        # create the network with STRONGLY_TYPED (where the flag still exists)
    builder_flags: tuple[str, ...] = ()
    route: str = ""             # INT8: "explicit" (Q/DQ) or "implicit" (calibrator); "" otherwise
    pin_memory_fp32: bool = False


def plan_build(api: TrtApi, precision: str, model_precision: str, quant_target: str | None) -> BuildPlan:
    """How to build ``precision`` from a folder of ``model_precision`` with this TensorRT; raises
    ValueError with the fix where it cannot be built."""
    if api.major not in SUPPORTED_MAJORS:
        raise ValueError(f"TensorRT {api.version} is not supported; install TensorRT 10 or 11 "
                         "(pip install -e .[tensorrt])")
    if model_precision == "int8" and precision != "int8":
        raise ValueError("this folder holds an int8 (Q/DQ) model; build it with --precision int8")
    if precision == "fp32":
        return BuildPlan("fp32", True)
    if precision == "fp16":
        return BuildPlan("fp16", True)
    if precision != "int8":
        raise ValueError(f"--precision {precision!r}; valid: fp32, fp16, int8")
    if model_precision == "int8":
        if quant_target != "tensorrt":
            raise ValueError("this int8 model folder was quantised for ONNX Runtime (unsigned activations, which "
                             "TensorRT rejects); run quantize --target tensorrt on the fp32 folder and build from that")
        return BuildPlan("qdq", True, route="explicit")
    if not api.implicit_int8:
        raise ValueError(f"TensorRT {api.version} has no implicit INT8 calibration (removed in TensorRT 11); run "
                         "quantize --model MODEL --calib DIR --target tensorrt --out MODEL_INT8 and build from MODEL_INT8")
    flags = ("FP16", "INT8") + (("PREFER_PRECISION_CONSTRAINTS",) if "PREFER_PRECISION_CONSTRAINTS" in
                                 api.builder_flags else ())
    return BuildPlan("fp32", False, flags, "implicit", pin_memory_fp32=True)


def network_creation_flags(api: TrtApi, plan: BuildPlan, trt) -> int:
    """The ``create_network`` argument: STRONGLY_TYPED where asked and the flag exists (TensorRT 11
    keeps it, ignored: strong typing is always on there)."""
    if plan.strongly_typed and "STRONGLY_TYPED" in api.network_flags:
        return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return 0
