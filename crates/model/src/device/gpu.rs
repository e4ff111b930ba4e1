//! What CUDA and wgpu share, the code that differs from the CPU path: both are burn's cubecl
//! backend over a runtime (`CubeBackend<R, F, I, BT>`), so the precision table, the check that
//! the device supports the float type, and the dispatch to a concrete backend live here once.

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, bf16, f16};
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime};

use super::{Job, Precision};
use crate::error::{Error, Result};

/// A GPU platform: its runtime, its boolean storage type and the precisions it offers.
pub(super) trait Platform {
    /// The cubecl runtime.
    type Runtime: CubeRuntime;
    /// How the runtime stores booleans (burn's choice per runtime).
    type Bool: BoolElement;
    /// The precisions kiln builds for this platform, and what to write instead of the others.
    const PRECISIONS: &'static [Precision];
    /// What to suggest for a precision the platform lacks.
    const INSTEAD: &'static str;
}

/// The autodiff backend of platform `P` with float type `F`.
type On<P, F> = Autodiff<CubeBackend<<P as Platform>::Runtime, F, i32, <P as Platform>::Bool>>;

/// The device type of platform `P`.
pub(super) type DeviceOf<P> = <<P as Platform>::Runtime as CubeRuntime>::CubeDevice;

/// Runs `job` on platform `P`'s `device` at `precision`, after checking that the platform
/// offers `precision` and that this device supports it. `what` names the device in messages
/// (`wgpu:0 (llvmpipe …)`).
pub(super) fn run<P: Platform, J: Job>(
    what: &str,
    device: DeviceOf<P>,
    precision: Precision,
    job: J,
) -> Result<J::Output> {
    if !P::PRECISIONS.contains(&precision) {
        return Err(Error::Device(format!(
            "precision {precision} is not available on device {what}: {}",
            P::INSTEAD
        )));
    }
    let supported = match precision {
        Precision::F32 => On::<P, f32>::supports_dtype(&device, DType::F32),
        Precision::F16 => On::<P, f16>::supports_dtype(&device, DType::F16),
        Precision::Bf16 => On::<P, bf16>::supports_dtype(&device, DType::BF16),
    };
    if !supported {
        return Err(Error::Device(format!(
            "device {what} does not support precision {precision}: {}",
            P::INSTEAD
        )));
    }
    Ok(match precision {
        Precision::F32 => job.run::<On<P, f32>>(device),
        Precision::F16 => job.run::<On<P, f16>>(device),
        Precision::Bf16 => job.run::<On<P, bf16>>(device),
    })
}
