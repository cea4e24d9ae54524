//! What a model is compiled for: an ISA level and a thread count ([`CodegenOptions`]).
//!
//! The level decides which instruction sequences the kernels use. It is chosen from the host
//! CPU ([`Isa::host`]) or named explicitly ([`Isa::from_str`]); a level the host cannot run is an
//! error, never a silent fallback. Nothing in this crate reads the environment: the CLI and the
//! tests turn their flags into a [`CodegenOptions`] and pass it to
//! [`crate::CompiledModel::compile_with`].

use std::fmt;
use std::str::FromStr;

/// An x86-64 ISA level, from the portable scalar code up to AVX-512 with VNNI.
///
/// Cranelift's x64 backend emits 128-bit vectors only, so today the levels differ in the dot
/// instruction the GEMM and depthwise kernels are built around (`pmaddwd` below the VNNI levels,
/// `vpdpbusd` on them) and in the width of the Rust loops off the GEMM path (AVX2 and AVX-512
/// adds). `Scalar` runs the reference loops everywhere: the kernels of every other level are
/// tested bit for bit against it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// One multiply-add at a time; the Rust reference loops for every op off the GEMM.
    Scalar,
    /// SSE4.1: 128-bit `pmaddwd` kernels.
    Sse41,
    /// AVX2 without VNNI: 128-bit `pmaddwd` kernels, 256-bit Rust loops for adds.
    Avx2,
    /// AVX-512 BW without VNNI: as AVX2, with 512-bit adds.
    Avx512Bw,
    /// AVX-VNNI (VEX-encoded `vpdpbusd`) without AVX-512.
    AvxVnni,
    /// AVX-512 VNNI.
    Avx512Vnni,
}

impl Isa {
    /// Every level, lowest first.
    pub const ALL: [Isa; 6] = [Isa::Scalar, Isa::Sse41, Isa::Avx2, Isa::Avx512Bw, Isa::AvxVnni, Isa::Avx512Vnni];

    /// The level's name on the command line (`--isa`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Sse41 => "sse4.1",
            Isa::Avx2 => "avx2",
            Isa::Avx512Bw => "avx512bw",
            Isa::AvxVnni => "avx-vnni",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// The best level this CPU runs.
    pub fn host() -> Isa {
        Isa::ALL.into_iter().rev().find(|l| l.on_host()).unwrap_or(Isa::Scalar)
    }

    /// Every level this CPU runs, lowest first (what the kernel tests cover on a machine).
    pub fn host_levels() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|l| l.on_host()).collect()
    }

    /// Whether this CPU has every feature the level's kernels use.
    pub fn on_host(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2");
            let avx512 = std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx512bw");
            match self {
                Isa::Scalar => true,
                Isa::Sse41 => std::is_x86_feature_detected!("sse4.1"),
                Isa::Avx2 => avx2,
                Isa::Avx512Bw => avx2 && avx512,
                // The VNNI kernels' dot tree becomes `vpdpbusd` only where Cranelift sees VNNI.
                Isa::AvxVnni => avx2 && crate::jit::host_flag("has_avx_vnni"),
                Isa::Avx512Vnni => avx2 && avx512 && crate::jit::host_flag("has_avx512vnni"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Isa::Scalar
        }
    }

    /// Whether ops other than the GEMM get JIT kernels (all levels but `Scalar`, where their Rust
    /// reference loops run).
    pub fn jit_kernels(self) -> bool {
        self != Isa::Scalar
    }

    /// Whether the dot kernels use VNNI's `vpdpbusd`.
    pub fn vnni(self) -> bool {
        matches!(self, Isa::AvxVnni | Isa::Avx512Vnni)
    }

    /// Whether Rust loops may use AVX2.
    pub fn avx2(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512Bw | Isa::AvxVnni | Isa::Avx512Vnni)
    }

    /// Whether Rust loops may use AVX-512 F/BW.
    pub fn avx512(self) -> bool {
        matches!(self, Isa::Avx512Bw | Isa::Avx512Vnni)
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Isa {
    type Err = String;

    /// A level by name (`avx2`); `host` is the best level of this CPU. A level this CPU cannot
    /// run is an error that lists the ones it can.
    fn from_str(s: &str) -> Result<Isa, String> {
        let levels = || Isa::host_levels().iter().map(|l| l.name()).collect::<Vec<_>>().join(", ");
        if s == "host" {
            return Ok(Isa::host());
        }
        let level = Isa::ALL.into_iter().find(|l| l.name() == s).ok_or_else(|| {
            let all: Vec<&str> = Isa::ALL.iter().map(|l| l.name()).collect();
            format!("unknown ISA level `{s}`; the levels are host, {}", all.join(", "))
        })?;
        if !level.on_host() {
            return Err(format!("this CPU cannot run ISA level {s}; it runs {}", levels()));
        }
        Ok(level)
    }
}

/// How a model is compiled: for which ISA level, to run on how many threads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CodegenOptions {
    /// The ISA level the kernels are built for.
    pub isa: Isa,
    /// Threads a run splits its batch over (at least 1; more only for a model whose images are
    /// independent, which [`crate::CompiledModel::compile_with`] checks).
    pub threads: usize,
}

impl CodegenOptions {
    /// The host's best level, one thread.
    pub fn host() -> CodegenOptions {
        CodegenOptions { isa: Isa::host(), threads: 1 }
    }

    /// `isa`, one thread.
    pub fn with_isa(isa: Isa) -> CodegenOptions {
        CodegenOptions { isa, threads: 1 }
    }
}

impl Default for CodegenOptions {
    fn default() -> Self {
        CodegenOptions::host()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_by_name_and_the_host_runs_its_own() {
        for l in Isa::host_levels() {
            assert_eq!(l.name().parse::<Isa>(), Ok(l));
        }
        assert_eq!("host".parse::<Isa>(), Ok(Isa::host()));
        assert!(Isa::host().on_host());
        let e = "sse".parse::<Isa>().unwrap_err();
        assert!(e.contains("unknown ISA level `sse`") && e.contains("avx512-vnni"), "{e}");
    }
}
