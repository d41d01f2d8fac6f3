//! GPUs: the built-in catalogue (for planning without the card) and, in `nvml`, the local devices.
pub mod catalogue;
pub mod nvml;
pub mod report;

pub use catalogue::{lookup, GpuSpec, CATALOGUE};

use clap::Args;
use serde::Serialize;

use crate::error::{Error, Result};

/// `--gpu NAME` / `--gpu-memory SIZE`, shared by `estimate`, `plan` and `fix`.
#[derive(Args, Clone, Debug, Default)]
pub struct GpuArgs {
    /// Target GPU from the built-in catalogue (e.g. rtx3090, a100-80, h100); `oomdoc gpu --list` shows them.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Memory of the target GPU as PyTorch reports it (e.g. 23.55GiB); overrides the catalogue's.
    #[arg(long)]
    pub gpu_memory: Option<String>,
}

/// The GPU a configuration must fit.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TargetGpu {
    pub name: String,
    pub memory_bytes: u64,
    /// Catalogue entry, when the GPU was named.
    #[serde(skip)]
    pub spec: Option<&'static GpuSpec>,
}

impl TargetGpu {
    /// What the reduction kernels read off this card; the calibration card's figures when the
    /// GPU was given by its memory alone.
    pub fn reduction_device(&self) -> crate::memory::reduction::Device {
        match self.spec {
            Some(s) => crate::memory::reduction::Device {
                sms: s.sms as u64,
                threads_per_sm: crate::memory::reduction::Device::threads_per_sm(
                    s.compute_capability,
                ),
            },
            None => crate::memory::reduction::CALIBRATION_DEVICE,
        }
    }
}

impl GpuArgs {
    /// `None` when neither flag was given.
    pub fn resolve(&self) -> Result<Option<TargetGpu>> {
        let spec = match &self.gpu {
            Some(name) => Some(lookup(name)?),
            None => None,
        };
        let memory = match &self.gpu_memory {
            Some(m) => match crate::units::parse_size(m)? {
                0 => return Err(Error::input("--gpu-memory must be above 0")),
                b => Some(b),
            },
            None => None,
        };
        Ok(match (spec, memory) {
            (None, None) => None,
            (Some(s), m) => Some(TargetGpu {
                name: s.name.to_string(),
                memory_bytes: m.unwrap_or(s.memory_bytes),
                spec: Some(s),
            }),
            (None, Some(m)) => Some(TargetGpu {
                name: "custom".into(),
                memory_bytes: m,
                spec: None,
            }),
        })
    }
}
