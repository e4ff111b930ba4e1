//! Where models run: the `device` param (`cpu`, `cpu:flex`, `cpu:ndarray`, `cuda[:N]`,
//! `wgpu[:N]`) and the `precision` param (`f32`; `f16` on GPUs that support it; `bf16` on
//! CUDA), turned into a concrete burn backend. Training and evaluation both dispatch here.
//!
//! - CPU is burn-flex or burn-ndarray (`cpu` is the faster, [`DEFAULT_CPU`]).
//! - `cuda` needs a build with the `cuda` cargo feature and an NVIDIA driver.
//! - `wgpu` (default build) runs on a Vulkan or Metal adapter: a GPU's driver, or Mesa's
//!   software device (lavapipe) on the CPU.
//!
//! Every check (feature built in, driver or adapter present, index in range, precision
//! supported) happens before the job starts, so bad input is an error message rather than a
//! panic in a GPU runtime's thread. The code CUDA and wgpu share (the precision table, the
//! dtype check, the cubecl backend types) is in `gpu.rs`.

use burn::tensor::backend::{AutodiffBackend, Backend};

use crate::error::{Error, Result};

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(any(feature = "cuda", feature = "wgpu"))]
mod gpu;
#[cfg(feature = "wgpu")]
mod wgpu;

/// A CPU backend of burn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuBackendKind {
    /// burn-ndarray.
    NdArray,
    /// burn-flex.
    Flex,
}

/// A device to run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU, on a given burn backend (`cpu` picks the faster, [`DEFAULT_CPU`]).
    Cpu(CpuBackendKind),
    /// CUDA GPU number N.
    Cuda(usize),
    /// wgpu adapter number N (Vulkan or Metal), in the order [`wgpu_adapters`] lists them.
    Wgpu(usize),
}

/// The CPU backend `device: cpu` means: the faster of the two in `kiln bench train`.
pub const DEFAULT_CPU: CpuBackendKind = CpuBackendKind::Flex;

impl Device {
    /// The GPU index, for devices that are GPUs.
    #[must_use]
    pub fn gpu_index(self) -> Option<usize> {
        match self {
            Self::Cpu(_) => None,
            Self::Cuda(n) | Self::Wgpu(n) => Some(n),
        }
    }

    /// The same kind of device with another GPU index (CPU devices stay as they are).
    #[must_use]
    pub fn with_gpu_index(self, n: usize) -> Self {
        match self {
            Self::Cpu(_) => self,
            Self::Cuda(_) => Self::Cuda(n),
            Self::Wgpu(_) => Self::Wgpu(n),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu(CpuBackendKind::Flex) => f.write_str("cpu:flex"),
            Self::Cpu(CpuBackendKind::NdArray) => f.write_str("cpu:ndarray"),
            Self::Cuda(n) => write!(f, "cuda:{n}"),
            Self::Wgpu(n) => write!(f, "wgpu:{n}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let indexed = |prefix: &str, make: fn(usize) -> Self| {
            s.strip_prefix(prefix)
                .and_then(|n| n.parse().ok())
                .map(make)
        };
        match s {
            "cpu" => Ok(Self::Cpu(DEFAULT_CPU)),
            "cpu:flex" => Ok(Self::Cpu(CpuBackendKind::Flex)),
            "cpu:ndarray" => Ok(Self::Cpu(CpuBackendKind::NdArray)),
            "cuda" | "gpu" => Ok(Self::Cuda(0)),
            "wgpu" => Ok(Self::Wgpu(0)),
            _ => indexed("cuda:", Self::Cuda)
                .or_else(|| indexed("wgpu:", Self::Wgpu))
                .ok_or_else(|| {
                    format!(
                        "{s:?} is not a device: write cpu (or cpu:flex, cpu:ndarray), cuda[:N] or wgpu[:N]"
                    )
                }),
        }
    }
}

/// What `device` accepts, for `kiln stages`.
pub const DEVICE_RULE: &str = "cpu, cpu:flex, cpu:ndarray, cuda[:N] or wgpu[:N]";

/// What `precision` accepts, for `kiln stages`.
pub const PRECISION_RULE: &str = "f32, f16 (GPUs that support it) or bf16 (CUDA)";

/// Accepts a `device` text or says why not (a parameter check).
///
/// # Errors
/// The text is not a device.
pub fn check_device(text: &str) -> Result<(), String> {
    text.parse::<Device>().map(drop)
}

/// Accepts a `precision` text or says why not (a parameter check).
///
/// # Errors
/// The text is not a precision.
pub fn check_precision(text: &str) -> Result<(), String> {
    text.parse::<Precision>().map(drop)
}

/// The `device` param as the device to use, given the GPUs the stage holds (the engine assigns
/// them to stages that declare `resources.gpu`): `cuda` or `wgpu` is the first GPU held and
/// `cuda:N`/`wgpu:N` the Nth. A stage holding none addresses GPUs by their system index.
///
/// # Errors
/// Not a device, or an index beyond the GPUs held.
pub fn resolve(text: &str, held: &[u32]) -> Result<Device, String> {
    let device = text.parse::<Device>()?;
    let Some(n) = device.gpu_index() else {
        return Ok(device);
    };
    if held.is_empty() {
        return Ok(device);
    }
    held.get(n)
        .map(|&gpu| device.with_gpu_index(gpu as usize))
        .ok_or_else(|| {
            format!(
                "device {text}: the stage holds {} GPU(s) ({}); declare more with resources.gpu",
                held.len(),
                held.iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// Floating-point precision of the weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats.
    F32,
    /// IEEE half precision (GPUs whose adapter supports it).
    F16,
    /// bfloat16 (CUDA only).
    Bf16,
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "fp32" | "float32" => Ok(Self::F32),
            "f16" | "fp16" | "float16" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            _ => Err(format!("{s:?} is not a precision: write f32, f16 or bf16")),
        }
    }
}

/// Work that trains (needs gradients), run on whichever backend the device param picks.
pub trait Job {
    /// What it returns.
    type Output;
    /// Runs on backend `B`, on `device`.
    fn run<B: AutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Work that only runs models forward (evaluation, decoding), on whichever backend the device
/// param picks.
pub trait InferJob {
    /// What it returns.
    type Output;
    /// Runs on backend `B`, on `device`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// The ndarray CPU autodiff backend.
pub type CpuBackend = burn::backend::Autodiff<burn::backend::NdArray<f32>>;

/// The flex CPU autodiff backend.
pub type FlexBackend = burn::backend::Autodiff<burn::backend::Flex<f32, i32>>;

/// Runs `job` on `device` at `precision`.
///
/// # Errors
/// A device this build leaves out (`cuda` without the feature), a missing driver or adapter,
/// a GPU index the machine does not have, or a precision the device does not support; all
/// before `job` starts.
pub fn dispatch<J: Job>(device: Device, precision: Precision, job: J) -> Result<J::Output> {
    match device {
        Device::Cpu(kind) => {
            if precision != Precision::F32 {
                return Err(Error::Device(format!(
                    "precision {precision} needs a GPU (device: cuda or wgpu); on the CPU use f32"
                )));
            }
            Ok(match kind {
                CpuBackendKind::NdArray => job.run::<CpuBackend>(Default::default()),
                CpuBackendKind::Flex => job.run::<FlexBackend>(Default::default()),
            })
        }
        Device::Cuda(index) => on_cuda(index, precision, job),
        Device::Wgpu(index) => on_wgpu(index, precision, job),
    }
}

/// Runs a forward-only `job` on `device` at `precision` (the backend without autodiff).
///
/// # Errors
/// As [`dispatch`].
pub fn dispatch_infer<J: InferJob>(
    device: Device,
    precision: Precision,
    job: J,
) -> Result<J::Output> {
    struct Forward<J>(J);
    impl<J: InferJob> Job for Forward<J> {
        type Output = J::Output;
        fn run<B: AutodiffBackend>(self, device: B::Device) -> J::Output {
            self.0.run::<B::InnerBackend>(device)
        }
    }
    dispatch(device, precision, Forward(job))
}

#[cfg(feature = "cuda")]
fn on_cuda<J: Job>(index: usize, precision: Precision, job: J) -> Result<J::Output> {
    cuda::dispatch(index, precision, job)
}

#[cfg(not(feature = "cuda"))]
fn on_cuda<J: Job>(index: usize, _: Precision, _: J) -> Result<J::Output> {
    Err(Error::Device(format!(
        "device cuda:{index} asked for, but this kiln was built without CUDA support: \
         rebuild with `cargo build --release --features cuda` (or use device: cpu or wgpu)"
    )))
}

#[cfg(feature = "wgpu")]
fn on_wgpu<J: Job>(index: usize, precision: Precision, job: J) -> Result<J::Output> {
    wgpu::dispatch(index, precision, job)
}

#[cfg(not(feature = "wgpu"))]
fn on_wgpu<J: Job>(index: usize, _: Precision, _: J) -> Result<J::Output> {
    Err(Error::Device(format!(
        "device wgpu:{index} asked for, but this kiln was built without wgpu support: \
         rebuild with the default features (`cargo build --release`) or use device: cpu"
    )))
}

/// `device` for logs: `wgpu:0` with the adapter's name when there is one
/// (`wgpu:0 (llvmpipe (LLVM 15.0.6, 256 bits))`), else as written.
#[must_use]
pub fn describe(device: Device) -> String {
    match device {
        #[cfg(feature = "wgpu")]
        Device::Wgpu(n) => match wgpu::adapters().get(n) {
            Some(a) => format!("{device} ({})", a.info.name),
            None => device.to_string(),
        },
        _ => device.to_string(),
    }
}

/// What this build and machine offer, one line per device: `(device text, description)`.
/// GPUs that are missing or left out of the build are listed with the reason.
#[must_use]
pub fn available() -> Vec<(String, String)> {
    let mut out = vec![
        (
            "cpu:flex".to_owned(),
            "burn-flex on the CPU (device: cpu)".to_owned(),
        ),
        (
            "cpu:ndarray".to_owned(),
            "burn-ndarray on the CPU".to_owned(),
        ),
    ];
    #[cfg(feature = "wgpu")]
    {
        let adapters = wgpu::adapters();
        for (i, a) in adapters.iter().enumerate() {
            out.push((
                format!("wgpu:{i}"),
                format!(
                    "{} ({:?}, {:?}; tensors up to {} MiB)",
                    a.info.name,
                    a.info.device_type,
                    a.info.backend,
                    a.max_tensor_bytes >> 20
                ),
            ));
        }
        if adapters.is_empty() {
            out.push(("wgpu".into(), format!("none: {}", wgpu::NO_ADAPTER)));
        }
    }
    #[cfg(not(feature = "wgpu"))]
    out.push(("wgpu".into(), "not in this build (default features)".into()));
    #[cfg(feature = "cuda")]
    match cuda::device_count() {
        Ok(n) if n > 0 => {
            out.extend((0..n).map(|i| (format!("cuda:{i}"), "NVIDIA GPU".to_owned())));
        }
        Ok(_) => out.push(("cuda".into(), "none: the driver reports no device".into())),
        Err(e) => out.push(("cuda".into(), format!("none: {e}"))),
    }
    #[cfg(not(feature = "cuda"))]
    out.push(("cuda".into(), "not in this build (--features cuda)".into()));
    out
}

thread_local! {
    /// The device of the job running on this thread, and the most bytes it binds as one tensor.
    static TENSOR_LIMIT: std::cell::RefCell<Option<(String, u64)>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` with `limit` (the device's name, and the most bytes one tensor may take there) as
/// this thread's [`check_fits`] limit.
#[cfg_attr(not(feature = "wgpu"), allow(dead_code))]
fn with_tensor_limit<R>(limit: (String, u64), f: impl FnOnce() -> R) -> R {
    struct Reset(Option<(String, u64)>);
    impl Drop for Reset {
        fn drop(&mut self) {
            TENSOR_LIMIT.with(|l| *l.borrow_mut() = self.0.take());
        }
    }
    let _reset = Reset(TENSOR_LIMIT.with(|l| l.replace(Some(limit))));
    f()
}

/// Checks that a tensor of `bytes` (described by `what`) fits the device of the job this
/// thread runs: wgpu binds a tensor as one storage buffer, and an adapter caps its size
/// (128 MiB on Mesa's software device, up to 4 GiB on GPUs), where the GPU runtime would
/// otherwise panic in its own thread. Always fine outside such a job and on other devices.
///
/// # Errors
/// The tensor is larger than the device binds, naming both.
pub fn check_fits(what: impl FnOnce() -> String, bytes: u64) -> Result<()> {
    TENSOR_LIMIT.with(|l| match &*l.borrow() {
        Some((device, limit)) if bytes > *limit => Err(Error::Device(format!(
            "{} takes {:.1} MiB, more than device {device} binds as one tensor ({:.1} MiB): \
             use a GPU whose driver allows larger buffers, precision f16, smaller sizes, \
             or device: cpu",
            what(),
            bytes as f64 / 1048576.0,
            *limit as f64 / 1048576.0
        ))),
        _ => Ok(()),
    })
}

/// The wgpu adapters of this machine, in `wgpu:N` order, as `name (type, api)` lines; empty
/// when there are none or the build leaves wgpu out.
#[must_use]
pub fn wgpu_adapters() -> Vec<String> {
    #[cfg(feature = "wgpu")]
    {
        wgpu::adapters()
            .iter()
            .map(|a| {
                format!(
                    "{} ({:?}, {:?})",
                    a.info.name, a.info.device_type, a.info.backend
                )
            })
            .collect()
    }
    #[cfg(not(feature = "wgpu"))]
    Vec::new()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;
    impl Job for Nothing {
        type Output = ();
        fn run<B: AutodiffBackend>(self, _: B::Device) {}
    }

    #[test]
    fn parses_devices() {
        assert_eq!("cpu".parse(), Ok(Device::Cpu(DEFAULT_CPU)));
        assert_eq!(
            "cpu:ndarray".parse(),
            Ok(Device::Cpu(CpuBackendKind::NdArray))
        );
        assert_eq!("cuda:1".parse(), Ok(Device::Cuda(1)));
        assert_eq!("cuda".parse(), Ok(Device::Cuda(0)));
        assert_eq!("wgpu".parse(), Ok(Device::Wgpu(0)));
        assert_eq!("wgpu:3".parse(), Ok(Device::Wgpu(3)));
        for bad in ["tpu", "wgpu:", "wgpu:x", "cuda:-1"] {
            let err = bad.parse::<Device>().expect_err(bad);
            assert!(err.contains("wgpu[:N]"), "{err}");
        }
        assert_eq!("bf16".parse(), Ok(Precision::Bf16));
        assert_eq!("f16".parse(), Ok(Precision::F16));
        assert_eq!(Device::Wgpu(2).to_string(), "wgpu:2");
    }

    #[test]
    fn gpu_slots_map_to_cuda_and_wgpu_alike() {
        for kind in ["cuda", "wgpu"] {
            let second = resolve(&format!("{kind}:1"), &[2, 3]).expect("held");
            assert_eq!(second.gpu_index(), Some(3));
            assert_eq!(second.to_string(), format!("{kind}:3"));
            assert_eq!(resolve(kind, &[2, 3]).expect("held").gpu_index(), Some(2));
            let err = resolve(&format!("{kind}:2"), &[2, 3]).expect_err("holds two");
            assert!(err.contains("holds 2 GPU(s) (2, 3)"), "{err}");
        }
        assert_eq!(resolve("wgpu:1", &[]), Ok(Device::Wgpu(1)));
        assert_eq!(resolve("cpu", &[4]), Ok(Device::Cpu(DEFAULT_CPU)));
    }

    #[test]
    fn half_precision_on_the_cpu_is_refused() {
        for p in [Precision::F16, Precision::Bf16] {
            let err = dispatch(Device::Cpu(DEFAULT_CPU), p, Nothing).expect_err("cpu is f32");
            assert!(err.to_string().contains(&format!("precision {p}")), "{err}");
        }
    }

    #[test]
    fn a_tensor_beyond_the_jobs_device_limit_is_refused() {
        let what = || "the token embedding".to_owned();
        assert!(check_fits(what, u64::MAX).is_ok(), "no limit outside a job");
        with_tensor_limit(("wgpu:0 (test)".into(), 128 << 20), || {
            assert!(check_fits(what, 128 << 20).is_ok());
            let err = check_fits(what, (128 << 20) + 1).expect_err("too large");
            let text = err.to_string();
            assert!(
                text.contains(
                    "the token embedding takes 128.0 MiB, more than device wgpu:0 (test)"
                ),
                "{text}"
            );
        });
        assert!(
            check_fits(what, u64::MAX).is_ok(),
            "the limit ends with the job"
        );
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let err = dispatch(Device::Cuda(0), Precision::F32, Nothing).expect_err("no cuda");
        assert!(err.to_string().contains("--features cuda"), "{err}");
    }
}
