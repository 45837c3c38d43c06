//! Finding the CUDA libraries without panicking, and compiling `kernels/*.cu` with NVRTC.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{anyhow, bail, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileError, CompileOptions, Ptx};

/// Each file is a self-contained NVRTC program (no headers), loaded as its own module.
const STREAM: (&str, &str) = ("stream.cu", include_str!("../../../kernels/stream.cu"));
const CONV: (&str, &str) = ("conv.cu", include_str!("../../../kernels/conv.cu"));
const SCAN: (&str, &str) = ("scan.cu", include_str!("../../../kernels/scan.cu"));

/// cudarc panics (inside a `OnceLock`) when a library it needs is missing, so each one is
/// probed first and reported as an error.
pub fn check_libraries() -> Result<()> {
    // SAFETY: each probe only dlopens and closes the library; nothing is called through it.
    let (driver, nvrtc, cublas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    if !driver {
        bail!("no CUDA driver found (libcuda.so could not be loaded)");
    }
    if !nvrtc {
        bail!(
            "the CUDA driver is present but NVRTC (libnvrtc.so.13) is not: install the CUDA 13 \
             toolkit or the nvidia-cuda-nvrtc wheel and add its lib folder to LD_LIBRARY_PATH"
        );
    }
    if !cublas {
        bail!(
            "the CUDA driver is present but cuBLAS (libcublas.so.13) is not: install the CUDA 13 \
             toolkit or the nvidia-cublas wheel and add its lib folder to LD_LIBRARY_PATH"
        );
    }
    Ok(())
}

/// Runs a cudarc call, turning a panic (e.g. a driver too old for a symbol) into an error.
pub fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| p.downcast_ref::<&str>().copied())
                .unwrap_or("unknown panic");
            Err(anyhow!("{what}: {msg}"))
        }
    }
}

/// (file, compute capability, the model sizes compiled in: d_state, d_conv, d_inner, dt_rank)
type Key = (&'static str, (i32, i32), [usize; 4]);

/// PTX per `Key`: compiled once per process, and kept on disk between processes (`disk`): NVRTC
/// takes ~2-3 s for the three modules, which every GPU run would otherwise pay at start.
fn ptx((file, src): (&'static str, &str), cc: (i32, i32), sizes: Sizes) -> Result<Ptx> {
    static CACHE: OnceLock<Mutex<HashMap<Key, String>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let key = (file, cc, [sizes.d_state, sizes.d_conv, sizes.d_inner, sizes.dt_rank]);
    if let Some(ptx) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(Ptx::from_src(ptx.clone()));
    }
    let options = vec![
            format!("--gpu-architecture=sm_{}{}", cc.0, cc.1),
            // the scan's state and the conv window live in registers, and the scan's row
            // strides are immediates: sizes fixed at compile time
            format!("-DD_STATE={}", sizes.d_state),
            format!("-DD_CONV={}", sizes.d_conv),
            format!("-DD_INNER={}", sizes.d_inner),
            format!("-DDT_RANK={}", sizes.dt_rank),
            "--std=c++17".into(),
        ];
    // the whole input of the compilation: the NVRTC version, the options, the source
    let version = nvrtc_version();
    let identity = format!("dna-mamba kernel cache 1\nnvrtc {version}\n{file}\n{}\n{src}", options.join(" "));
    if let Some(text) = disk::load(&identity) {
        cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, text.clone());
        return Ok(Ptx::from_src(text));
    }
    let opts = CompileOptions { options, ..Default::default() };
    let ptx = compile_ptx_with_opts(src, opts).map_err(|e| match e {
        CompileError::CompileError { log, .. } => {
            anyhow!("NVRTC failed to compile kernels/{file}:\n{}", log.to_string_lossy())
        }
        other => anyhow!("NVRTC, kernels/{file}: {other}"),
    })?;
    let text = ptx.to_src();
    disk::store(&identity, &text);
    cache.lock().unwrap_or_else(|e| e.into_inner()).insert(key, text);
    Ok(ptx)
}

/// "major.minor" of the NVRTC library loaded (part of a cached kernel's identity).
fn nvrtc_version() -> String {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtcVersion writes two ints through the pointers; check_libraries found NVRTC.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if rc == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS { format!("{major}.{minor}") } else { "unknown".into() }
}

/// Compiled kernels on disk: `$DNA_MAMBA_KERNEL_CACHE`, else `$XDG_CACHE_HOME/dna-mamba/kernels`,
/// else `~/.cache/dna-mamba/kernels` (`DNA_MAMBA_KERNEL_CACHE=off`: none). A file is named by a
/// hash of everything its compilation read and starts with that text, so a collision or a
/// stale file is recompiled, never used. The cache only saves time: a folder that cannot be
/// read or written means compiling, never an error.
pub(crate) mod disk {
    use std::path::{Path, PathBuf};

    fn dir() -> Option<PathBuf> {
        let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
        match var("DNA_MAMBA_KERNEL_CACHE") {
            Some(p) if p.as_os_str() == "off" => None,
            Some(p) => Some(p),
            None => var("XDG_CACHE_HOME").map(|c| c.join("dna-mamba/kernels")).or_else(|| var("HOME").map(|h| h.join(".cache/dna-mamba/kernels"))),
        }
    }

    /// FNV-1a, 64 bits: stable across builds (std's hasher is not).
    fn fnv(text: &str) -> u64 {
        text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3))
    }

    fn path(root: &Path, identity: &str) -> PathBuf {
        root.join(format!("{:016x}.ptx", fnv(identity)))
    }

    pub fn load(identity: &str) -> Option<String> {
        load_in(&dir()?, identity)
    }

    pub fn store(identity: &str, ptx: &str) {
        if let Some(root) = dir() {
            store_in(&root, identity, ptx)
        }
    }

    fn load_in(root: &Path, identity: &str) -> Option<String> {
        let text = std::fs::read_to_string(path(root, identity)).ok()?;
        let rest = text.strip_prefix(identity)?.strip_prefix("\n\0\n")?;
        Some(rest.to_string())
    }

    fn store_in(root: &Path, identity: &str, ptx: &str) {
        let path = path(root, identity);
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(path.parent().expect("a file in the cache folder"))?;
            // written whole under a unique name, then renamed: a reader sees all of it or none
            let tmp = path.with_extension(format!("tmp{}", std::process::id()));
            std::fs::write(&tmp, format!("{identity}\n\0\n{ptx}"))?;
            std::fs::rename(&tmp, &path).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
        };
        let _ = write();
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stored_kernels_load_only_for_the_same_compilation() {
            let dir = tempfile::tempdir().unwrap();
            let root = dir.path().join("kernels");
            assert_eq!(load_in(&root, "a\nsource"), None);
            store_in(&root, "a\nsource", "PTX one");
            assert_eq!(load_in(&root, "a\nsource").as_deref(), Some("PTX one"));
            assert_eq!(load_in(&root, "a\nsource, edited"), None);
            // a file of another compilation under the same name (a hash collision) is not used
            std::fs::write(path(&root, "a\nsource"), "b\nsource\n\0\nPTX two").unwrap();
            assert_eq!(load_in(&root, "a\nsource"), None);
            // a cache that cannot be written is no error: nothing is stored
            let file = dir.path().join("plain-file");
            std::fs::write(&file, "").unwrap();
            store_in(&file.join("sub"), "c", "PTX three");
            assert_eq!(load_in(&file.join("sub"), "c"), None);
        }
    }
}

/// The architecture the kernels are compiled for: the device's, or an older one named by
/// `DNA_MAMBA_CC` (e.g. `80`), whose PTX the driver JIT-compiles for the device. That runs the
/// generic (sm_80) build on a newer GPU, which is how the GPU tests cover the path that A100s
/// and consumer cards take; a target newer than the device is refused.
fn target(device: (i32, i32)) -> Result<(i32, i32)> {
    let Ok(v) = std::env::var("DNA_MAMBA_CC") else { return Ok(device) };
    let n: i32 = v.trim().parse().map_err(|_| anyhow!("DNA_MAMBA_CC={v}: expected a compute capability such as 80"))?;
    let cc = (n / 10, n % 10);
    if cc < (8, 0) || cc > device {
        bail!("DNA_MAMBA_CC={v}: the kernels need compute capability 8.0 or newer, and at most the device's {}.{}", device.0, device.1);
    }
    Ok(cc)
}

/// The model sizes the kernels are compiled for.
#[derive(Clone, Copy, Debug)]
pub struct Sizes {
    pub d_state: usize,
    pub d_conv: usize,
    pub d_inner: usize,
    pub dt_rank: usize,
}

impl Sizes {
    /// Whether scan_ends computes dt_proj itself (FUSE_DT in kernels/scan.cu): δ_r and the
    /// channel's dt_proj row fit its registers and are read as float4.
    pub fn fuse_dt(&self) -> bool {
        self.dt_rank <= 16 && self.dt_rank.is_multiple_of(4) && self.d_state.is_multiple_of(4)
    }
}

/// The kernels of `kernels/*.cu`, loaded into one context.
pub struct Kernels {
    pub embed: CudaFunction,
    pub swap_halves: CudaFunction,
    pub rms_norm: CudaFunction,
    pub sum_rows: CudaFunction,
    pub conv_silu: CudaFunction,
    pub scan_ends: CudaFunction,
    pub scan_combine: CudaFunction,
    pub scan_output: CudaFunction,
    /// scan_output after scan_ends (Δ ready, no state written back), unpacked / packed: the
    /// same arguments, those flags fixed at compile time.
    pub scan_output_ready: CudaFunction,
    pub scan_output_ready_packed: CudaFunction,
    pub scan_fused: CudaFunction,
    pub scan_fix: CudaFunction,
}

impl Kernels {
    pub fn load(ctx: &Arc<CudaContext>, sizes: Sizes) -> Result<Self> {
        let cc = target(ctx.compute_capability()?)?;
        let load = |file| ctx.load_module(ptx(file, cc, sizes)?).map_err(anyhow::Error::from);
        let (stream, conv, scan) = (load(STREAM)?, load(CONV)?, load(SCAN)?);
        let f = |m: &Arc<CudaModule>, name: &str| m.load_function(name).map_err(|e| anyhow!("kernel {name}: {e}"));
        Ok(Kernels {
            embed: f(&stream, "embed")?,
            swap_halves: f(&stream, "swap_halves")?,
            rms_norm: f(&stream, "rms_norm")?,
            sum_rows: f(&stream, "sum_rows")?,
            conv_silu: f(&conv, "conv_silu")?,
            scan_ends: f(&scan, "scan_ends")?,
            scan_combine: f(&scan, "scan_combine")?,
            scan_output: f(&scan, "scan_output")?,
            scan_output_ready: f(&scan, "scan_output_ready")?,
            scan_output_ready_packed: f(&scan, "scan_output_ready_packed")?,
            scan_fused: f(&scan, "scan_fused")?,
            scan_fix: f(&scan, "scan_fix")?,
        })
    }
}
