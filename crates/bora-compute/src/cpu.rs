//! The one place that decides which instruction set the kernels run on.
//!
//! The release binary targets baseline x86-64 and carries each hot kernel several times, for
//! AVX-512, for AVX2 and portable; every kernel asks [`cpu_path`] which one to run. It is the
//! best path this CPU supports, unless `BORA_CPU` names another, so that the AVX2 and
//! portable paths (what most laptops and many cloud machines run) can be tested and measured
//! on an AVX-512 machine. A path the CPU cannot run is refused: [`select_cpu_path`] returns
//! the error for the binary to print at startup, and a kernel reached without that check
//! stops with the same message rather than executing instructions the CPU lacks.

use std::sync::OnceLock;

use crate::ComputeError;

/// The environment variable that forces a path: `avx512`, `avx2` or `portable`.
pub const CPU_ENV: &str = "BORA_CPU";

/// An instruction set the kernels are written for, from the widest down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CpuPath {
    /// Plain Rust, whatever the target's baseline gives (SSE2 on x86-64).
    Portable,
    /// AVX2 with FMA and F16C (x86-64-v3).
    Avx2,
    /// AVX-512 F, BW, VL and DQ on top of AVX2 (x86-64-v4); the decode kernels also use
    /// AVX512-VNNI where present ([`has_avx512_vnni`]).
    Avx512,
}

impl CpuPath {
    /// Every path, from the widest down.
    pub const ALL: [CpuPath; 3] = [CpuPath::Avx512, CpuPath::Avx2, CpuPath::Portable];

    /// The name `BORA_CPU` takes and `bora info` prints.
    pub fn name(self) -> &'static str {
        match self {
            CpuPath::Avx512 => "avx512",
            CpuPath::Avx2 => "avx2",
            CpuPath::Portable => "portable",
        }
    }

    /// True when this CPU can execute the path's instructions.
    pub fn supported(self) -> bool {
        match self {
            CpuPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            CpuPath::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            CpuPath::Avx512 => {
                CpuPath::Avx2.supported()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512dq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The widest path this CPU supports.
    pub fn best() -> CpuPath {
        CpuPath::ALL
            .into_iter()
            .find(|p| p.supported())
            .unwrap_or(CpuPath::Portable)
    }

    /// The paths this CPU supports, from the widest down: what the tests run.
    pub fn supported_paths() -> Vec<CpuPath> {
        CpuPath::ALL.into_iter().filter(|p| p.supported()).collect()
    }

    /// The path `value` (a `BORA_CPU` setting) names, if this CPU can run it.
    pub fn parse(value: &str) -> Result<CpuPath, ComputeError> {
        let path = CpuPath::ALL
            .into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(value.trim()))
            .ok_or_else(|| {
                ComputeError::CpuPath(format!(
                    "{CPU_ENV}={value:?} is not a kernel path; use avx512, avx2 or portable \
                     (or unset it for the best this CPU runs, {})",
                    CpuPath::best().name()
                ))
            })?;
        if !path.supported() {
            return Err(ComputeError::CpuPath(format!(
                "{CPU_ENV}={} asks for instructions this CPU does not have; it runs {} \
                 (unset {CPU_ENV} or choose one of them)",
                path.name(),
                CpuPath::supported_paths()
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(path)
    }
}

impl std::fmt::Display for CpuPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

static PATH: OnceLock<Result<CpuPath, String>> = OnceLock::new();

fn from_env() -> Result<CpuPath, String> {
    match std::env::var(CPU_ENV) {
        Ok(v) if !v.trim().is_empty() => CpuPath::parse(&v).map_err(|e| e.to_string()),
        _ => Ok(CpuPath::best()),
    }
}

/// Reads `BORA_CPU` (once per process) and returns the path every kernel will run, or why
/// the setting cannot be honoured. The binary calls this before any work, so a bad setting
/// is a clear error at startup.
pub fn select_cpu_path() -> Result<CpuPath, ComputeError> {
    PATH.get_or_init(from_env)
        .clone()
        .map_err(ComputeError::CpuPath)
}

/// The path the kernels run: the best this CPU supports, or the one `BORA_CPU` forces.
///
/// # Panics
/// When `BORA_CPU` names a path this CPU cannot run and nothing called [`select_cpu_path`]
/// first: executing the forced path's instructions would be undefined behaviour.
#[inline]
pub fn cpu_path() -> CpuPath {
    match PATH.get_or_init(from_env) {
        Ok(p) => *p,
        Err(e) => panic!("{e}"),
    }
}

/// One line for `bora info` and benchmark output: the path the kernels run, whether
/// `BORA_CPU` forced it, and the paths this CPU supports.
pub fn describe_cpu_path() -> String {
    let forced = std::env::var(CPU_ENV).is_ok_and(|v| !v.trim().is_empty());
    let supported: Vec<&str> = CpuPath::supported_paths()
        .iter()
        .map(|p| p.name())
        .collect();
    let vnni = if cpu_path() == CpuPath::Avx512 && has_avx512_vnni() {
        " with VNNI"
    } else {
        ""
    };
    format!(
        "{}{vnni} ({}; this CPU runs {})",
        cpu_path().name(),
        if forced {
            format!("forced by {CPU_ENV}")
        } else {
            format!("the widest this CPU runs; set {CPU_ENV} to force another")
        },
        supported.join(", ")
    )
}

/// True when the AVX-512 kernels may also use AVX512-VNNI (`vpdpwssd`, a 16-bit `madd`
/// and an add in one); only asked on the AVX-512 path.
#[inline]
pub(crate) fn has_avx512_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_or_unsupported_paths_are_refused() {
        for p in CpuPath::supported_paths() {
            assert_eq!(CpuPath::parse(p.name()).unwrap(), p);
            assert_eq!(CpuPath::parse(&p.name().to_uppercase()).unwrap(), p);
        }
        assert_eq!(CpuPath::parse("portable").unwrap(), CpuPath::Portable);
        let err = CpuPath::parse("sse9").unwrap_err().to_string();
        assert!(err.contains("BORA_CPU") && err.contains("avx2"), "{err}");
        for p in CpuPath::ALL.into_iter().filter(|p| !p.supported()) {
            let err = CpuPath::parse(p.name()).unwrap_err().to_string();
            assert!(err.contains("does not have"), "{err}");
        }
        assert!(CpuPath::best().supported());
        assert!(CpuPath::supported_paths().contains(&cpu_path()));
    }
}
