#!/usr/bin/env python3
"""Compile kernels/*.cu through NVRTC as src/backend/cuda/module.rs does (same options), for
sm_90 and sm_80 and a few model shapes, without a GPU. Needs the nvidia-cuda-nvrtc wheel
(13.0, the GPU machine's NVRTC). Prints each failure's log; exit 1 if any failed."""
import ctypes, glob, os, sys
import nvidia
lib = next(p for d in nvidia.__path__ for p in glob.glob(os.path.join(d, "cu13", "lib", "libnvrtc.so*")) if "builtins" not in p)
# the builtins library is found through the loader path, so load it first by its full path
for b in glob.glob(os.path.join(os.path.dirname(lib), "libnvrtc-builtins.so*")):
    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
nvrtc = ctypes.CDLL(lib)
root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "kernels")
# (d_state, d_conv, d_inner, dt_rank): Ph/PS 131k, a tiny test shape, PlantCaduceus-like, odd sizes
shapes = [(16, 4, 512, 16), (16, 4, 40, 2), (16, 4, 2048, 64), (10, 3, 24, 2), (16, 4, 256, 8)]
failed = 0
for path in sorted(glob.glob(os.path.join(root, "*.cu"))):
    src = open(path, "rb").read()
    for arch in ("90", "80"):
        for ds, dc, di, rk in shapes:
            prog = ctypes.c_void_p()
            assert nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, os.path.basename(path).encode(), 0, None, None) == 0
            opts = [f"--gpu-architecture=sm_{arch}", f"-DD_STATE={ds}", f"-DD_CONV={dc}", f"-DD_INNER={di}", f"-DDT_RANK={rk}", "--std=c++17"]
            arr = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
            rc = nvrtc.nvrtcCompileProgram(prog, len(opts), arr)
            size = ctypes.c_size_t()
            nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            nvrtc.nvrtcGetProgramLog(prog, log)
            text = log.value.decode(errors="replace").strip()
            if rc != 0 or "warning" in text:
                print(f"{os.path.basename(path)} sm_{arch} {opts[1:5]}: rc={rc}\n{text}")
                failed += rc != 0
            nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
print("nvrtc-check:", "FAILED" if failed else "ok")
sys.exit(1 if failed else 0)
