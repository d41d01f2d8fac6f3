//! Knowing the model: presets, Hugging Face configs, safetensors headers, TOML workloads, traces.
pub mod trace;
