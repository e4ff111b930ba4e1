//! `device: wgpu[:N]`: burn-wgpu on a Vulkan (Linux, Windows) or Metal (macOS) adapter.
//!
//! The adapters are listed once per process, in the graphics API burn-wgpu uses; `wgpu:N` is
//! the Nth, as `kiln devices` lists them. An adapter is handed to burn as cubecl's typed index
//! (the kth discrete GPU, the kth integrated GPU, …), which cubecl resolves over the same list.

use std::sync::OnceLock;

use burn_wgpu::graphics::{AutoGraphicsApi, GraphicsApi};
use burn_wgpu::{WgpuDevice, WgpuRuntime};
use wgpu::{AdapterInfo, DeviceType};

use super::gpu::{self, Platform};
use super::{Job, Precision};
use crate::error::{Error, Result};

struct Wgpu;

impl Platform for Wgpu {
    type Runtime = WgpuRuntime;
    type Bool = u32;
    const PRECISIONS: &'static [Precision] = &[Precision::F32, Precision::F16];
    const INSTEAD: &'static str = "wgpu offers f32, and f16 where the adapter supports it \
                                   (bf16 is CUDA only)";
}

/// An adapter: what wgpu says of it, and the largest buffer it binds (one tensor).
pub(super) struct Adapter {
    pub info: AdapterInfo,
    pub max_tensor_bytes: u64,
}

/// The adapters of this machine, in `wgpu:N` order (listed once per process).
pub(super) fn adapters() -> &'static [Adapter] {
    static ADAPTERS: OnceLock<Vec<Adapter>> = OnceLock::new();
    ADAPTERS.get_or_init(|| {
        let backend = AutoGraphicsApi::backend();
        let instance = wgpu::Instance::new(wgpu::InstanceDescriptor {
            backends: backend.into(),
            ..wgpu::InstanceDescriptor::new_without_display_handle()
        });
        let found =
            burn_cubecl::cubecl::future::block_on(instance.enumerate_adapters(backend.into()));
        found
            .iter()
            .map(|a| Adapter {
                info: a.get_info(),
                max_tensor_bytes: a.limits().max_storage_buffer_binding_size,
            })
            // cubecl cannot address adapters of type Other by index.
            .filter(|a| a.info.device_type != DeviceType::Other)
            .collect()
    })
}

/// What to install when there is no adapter at all.
pub(super) const NO_ADAPTER: &str = "no Vulkan or Metal adapter found. Install your GPU vendor's Vulkan \
    driver, or for Mesa's software device (lavapipe, on the CPU) the Debian/Ubuntu packages \
    mesa-vulkan-drivers and libvulkan1; or use device: cpu";

/// cubecl's name for the `index`th adapter: its type and its rank among adapters of that type.
fn cubecl_device(adapters: &[&AdapterInfo], index: usize) -> Result<WgpuDevice> {
    let Some(info) = adapters.get(index) else {
        return Err(Error::Device(if adapters.is_empty() {
            format!("device wgpu:{index}: {NO_ADAPTER}")
        } else {
            format!(
                "device wgpu:{index} asked for, but this machine has {} wgpu adapter(s): {}",
                adapters.len(),
                list(adapters)
            )
        }));
    };
    let rank = adapters[..index]
        .iter()
        .filter(|a| a.device_type == info.device_type)
        .count();
    match info.device_type {
        DeviceType::DiscreteGpu => Ok(WgpuDevice::DiscreteGpu(rank)),
        DeviceType::IntegratedGpu => Ok(WgpuDevice::IntegratedGpu(rank)),
        DeviceType::VirtualGpu => Ok(WgpuDevice::VirtualGpu(rank)),
        // cubecl addresses only the first CPU adapter.
        DeviceType::Cpu if rank == 0 => Ok(WgpuDevice::Cpu),
        _ => Err(Error::Device(format!(
            "device wgpu:{index} ({}) is a second software adapter, which burn cannot address; \
             use the first",
            info.name
        ))),
    }
}

fn list(adapters: &[&AdapterInfo]) -> String {
    adapters
        .iter()
        .enumerate()
        .map(|(i, a)| format!("wgpu:{i} {} ({:?})", a.name, a.device_type))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `job` on wgpu adapter `index` at `precision`.
pub(super) fn dispatch<J: Job>(index: usize, precision: Precision, job: J) -> Result<J::Output> {
    let adapters = adapters();
    let infos: Vec<&AdapterInfo> = adapters.iter().map(|a| &a.info).collect();
    let device = cubecl_device(&infos, index)?;
    let adapter = &adapters[index];
    let what = format!("wgpu:{index} ({})", adapter.info.name);
    super::with_tensor_limit((what.clone(), adapter.max_tensor_bytes), || {
        gpu::run::<Wgpu, J>(&what, device, precision, job)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, device_type: DeviceType) -> AdapterInfo {
        AdapterInfo {
            name: name.into(),
            vendor: 0,
            device: 0,
            device_type,
            device_pci_bus_id: String::new(),
            driver: String::new(),
            driver_info: String::new(),
            backend: wgpu::Backend::Vulkan,
            subgroup_min_size: 0,
            subgroup_max_size: 0,
            transient_saves_memory: false,
        }
    }

    #[test]
    fn adapters_map_to_cubecl_typed_indices() {
        let machine = [
            info("a", DeviceType::DiscreteGpu),
            info("b", DeviceType::IntegratedGpu),
            info("c", DeviceType::DiscreteGpu),
            info("llvmpipe", DeviceType::Cpu),
        ];
        let machine: Vec<&AdapterInfo> = machine.iter().collect();
        let got: Vec<WgpuDevice> = (0..4)
            .map(|i| cubecl_device(&machine, i).expect("exists"))
            .collect();
        assert_eq!(
            got,
            [
                WgpuDevice::DiscreteGpu(0),
                WgpuDevice::IntegratedGpu(0),
                WgpuDevice::DiscreteGpu(1),
                WgpuDevice::Cpu
            ]
        );
        let err = cubecl_device(&machine, 7).expect_err("only 4").to_string();
        assert!(
            err.contains("wgpu:7") && err.contains("4 wgpu adapter(s)"),
            "{err}"
        );
        assert!(err.contains("wgpu:3 llvmpipe"), "{err}");
        let err = cubecl_device(&[], 0).expect_err("none").to_string();
        assert!(err.contains("mesa-vulkan-drivers"), "{err}");
    }
}
