//! The local GPUs, read through NVML (`nvml-wrapper`, which loads the driver's library at run time),
//! for `oomdoc gpu` and for sampling memory while `run`/`fit` watch a command.
use std::collections::HashSet;
use std::ffi::OsStr;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::Serialize;

/// Library names tried in order: the versioned name ships with every driver; the bare name only
/// with the development package (nvml-wrapper's default), so it comes second.
const LIB_NAMES: &[&str] = &["libnvidia-ml.so.1", "libnvidia-ml.so"];

/// bf16 arithmetic needs compute capability 8.0 (Ampere) or newer (CUDA C Programming Guide,
/// "Arithmetic Instructions"; `torch.cuda.is_bf16_supported()` checks the same major >= 8).
const BF16_MIN_MAJOR: u32 = 8;

/// One process using a GPU.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GpuProcess {
    pub pid: u32,
    /// Its command name (`/proc/PID/comm`), where readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// GPU memory it uses; absent where the driver does not say (e.g. Windows WDDM, containers).
    pub used_bytes: Option<u64>,
}

/// One local GPU.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LocalGpu {
    pub index: u32,
    pub name: String,
    pub total_bytes: u64,
    pub free_bytes: u64,
    pub used_bytes: u64,
    /// (major, minor)
    pub compute_capability: Option<(u32, u32)>,
    pub bf16: Option<bool>,
    pub processes: Vec<GpuProcess>,
    /// The matching entry of the built-in catalogue, if any (for `--gpu`).
    pub catalogue_id: Option<&'static str>,
}

/// What `oomdoc gpu` reports. Without a driver: no GPUs and the reason.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GpuReport {
    pub gpus: Vec<LocalGpu>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub driver_version: Option<String>,
    /// CUDA version the driver supports, e.g. "12.4".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_driver_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Opens NVML, or says in one line why it cannot.
pub fn open() -> Result<Nvml, String> {
    let mut first: Option<NvmlError> = None;
    for name in LIB_NAMES {
        match Nvml::builder().lib_path(OsStr::new(name)).init() {
            Ok(n) => return Ok(n),
            Err(e) => {
                first.get_or_insert(e);
            }
        }
    }
    Err(match first {
        Some(NvmlError::LibloadingError(_)) | None => format!(
            "no NVIDIA driver found ({} cannot be loaded), so NVML is not available",
            LIB_NAMES[0]
        ),
        Some(NvmlError::DriverNotLoaded) => {
            "the NVIDIA driver is not loaded (NVML: DriverNotLoaded)".into()
        }
        Some(NvmlError::NoPermission) => {
            "no permission to query the NVIDIA driver (NVML: NoPermission)".into()
        }
        Some(e) => format!("NVML could not start: {e}"),
    })
}

/// Whether a compute capability has native bf16.
pub fn bf16_supported(cc: (u32, u32)) -> bool {
    cc.0 >= BF16_MIN_MAJOR
}

/// Reads every local GPU. Never fails: problems become `reason`.
pub fn query() -> GpuReport {
    let nvml = match open() {
        Ok(n) => n,
        Err(reason) => return no_gpus(reason),
    };
    let count = match nvml.device_count() {
        Ok(c) => c,
        Err(e) => return no_gpus(format!("NVML cannot count the GPUs: {e}")),
    };
    let mut gpus = Vec::new();
    for index in 0..count {
        let dev = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(_) => continue,
        };
        let name = dev.name().unwrap_or_else(|_| format!("GPU {index}"));
        let mem = dev.memory_info().ok();
        let cc = dev
            .cuda_compute_capability()
            .ok()
            .map(|c| (c.major.max(0) as u32, c.minor.max(0) as u32));
        let mut processes = Vec::new();
        let mut seen = HashSet::new();
        let compute = dev.running_compute_processes().unwrap_or_default();
        let graphics = dev.running_graphics_processes().unwrap_or_default();
        for p in compute.into_iter().chain(graphics) {
            if !seen.insert(p.pid) {
                continue;
            }
            processes.push(GpuProcess {
                pid: p.pid,
                name: process_name(p.pid),
                used_bytes: match p.used_gpu_memory {
                    UsedGpuMemory::Used(b) => Some(b),
                    UsedGpuMemory::Unavailable => None,
                },
            });
        }
        gpus.push(LocalGpu {
            index,
            catalogue_id: crate::gpu::lookup(&name).ok().map(|g| g.id),
            name,
            total_bytes: mem.as_ref().map_or(0, |m| m.total),
            free_bytes: mem.as_ref().map_or(0, |m| m.free),
            used_bytes: mem.as_ref().map_or(0, |m| m.used),
            bf16: cc.map(bf16_supported),
            compute_capability: cc,
            processes,
        });
    }
    let reason = if gpus.is_empty() {
        Some("the NVIDIA driver is loaded but reports no GPU".to_string())
    } else {
        None
    };
    GpuReport {
        gpus,
        driver_version: nvml.sys_driver_version().ok(),
        cuda_driver_version: nvml
            .sys_cuda_driver_version()
            .ok()
            .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
        reason,
    }
}

fn no_gpus(reason: String) -> GpuReport {
    GpuReport {
        gpus: Vec::new(),
        driver_version: None,
        cuda_driver_version: None,
        reason: Some(reason),
    }
}

/// `/proc/PID/comm`, trimmed.
fn process_name(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// One reading of one GPU.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSample {
    pub index: u32,
    /// Memory in use on the whole device.
    pub device_used_bytes: u64,
    /// Memory used by the given processes; `None` when none of them shows up on this GPU.
    pub process_bytes: Option<u64>,
}

/// Periodic memory readings of every local GPU (for `run` and `fit`).
pub struct Sampler {
    nvml: Nvml,
    /// (index, name, total bytes)
    pub devices: Vec<(u32, String, u64)>,
}

impl Sampler {
    /// Opens NVML; the error says why there will be no GPU figures.
    pub fn open() -> Result<Sampler, String> {
        let nvml = open()?;
        let count = nvml
            .device_count()
            .map_err(|e| format!("NVML cannot count the GPUs: {e}"))?;
        let mut devices = Vec::new();
        for i in 0..count {
            if let Ok(d) = nvml.device_by_index(i) {
                let name = d.name().unwrap_or_else(|_| format!("GPU {i}"));
                let total = d.memory_info().map(|m| m.total).unwrap_or(0);
                devices.push((i, name, total));
            }
        }
        if devices.is_empty() {
            return Err("the NVIDIA driver is loaded but reports no GPU".into());
        }
        Ok(Sampler { nvml, devices })
    }

    /// Reads every device; `pids` are the watched command's processes.
    pub fn sample(&self, pids: &HashSet<u32>) -> Vec<DeviceSample> {
        let mut out = Vec::with_capacity(self.devices.len());
        for (index, _, _) in &self.devices {
            let Ok(dev) = self.nvml.device_by_index(*index) else {
                continue;
            };
            let used = dev.memory_info().map(|m| m.used).unwrap_or(0);
            let mut mine: Option<u64> = None;
            if let Ok(procs) = dev.running_compute_processes() {
                for p in procs {
                    if pids.contains(&p.pid) {
                        let b = match p.used_gpu_memory {
                            UsedGpuMemory::Used(b) => b,
                            UsedGpuMemory::Unavailable => 0,
                        };
                        mine = Some(mine.unwrap_or(0) + b);
                    }
                }
            }
            out.push(DeviceSample {
                index: *index,
                device_used_bytes: used,
                process_bytes: mine,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_from_compute_capability() {
        assert!(!bf16_supported((7, 5)));
        assert!(bf16_supported((8, 0)));
        assert!(bf16_supported((9, 0)));
    }

    #[test]
    fn no_driver_json_shape() {
        let r = no_gpus("NVML is not available".into());
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"gpus": [], "reason": "NVML is not available"})
        );
    }
}
