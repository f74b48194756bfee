//! synscope benchmarks: see bench/RESULTS.md for what is measured and how.

fn main() -> anyhow::Result<()> {
    anyhow::bail!("no benchmark yet: the engine benchmarks arrive with the detection engine")
}
