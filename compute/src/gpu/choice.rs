//! Which adapter to open when the user names one (`--adapter`): a machine may hold several
//! (a laptop's integrated and discrete GPUs; Mesa's lavapipe beside SwiftShader, the CPU
//! adapter Chromium ships). The choice is a pure function of the adapters' names, so its rules
//! are tested without any of them: a name matches when it contains the wanted text, ignoring
//! case; a name equal to it wins over names that only contain it; more than one match otherwise
//! is an error naming them, as is none. Names are written as [`super::AdapterSummary`]
//! displays them, `name (backend, type, driver)`, so the backend or driver may decide too.

/// The index of the adapter `wanted` names among `names`, or why there is none.
pub fn choose(names: &[String], wanted: &str) -> Result<usize, String> {
    let want = wanted.trim().to_lowercase();
    if want.is_empty() {
        return Err("an adapter's name (or part of it) is needed".into());
    }
    let exact = |n: &str| {
        let n = n.to_lowercase();
        n == want || n.starts_with(&format!("{want} ("))
    };
    let equal: Vec<usize> = (0..names.len()).filter(|&i| exact(&names[i])).collect();
    let hits: Vec<usize> = if equal.is_empty() {
        (0..names.len())
            .filter(|&i| names[i].to_lowercase().contains(&want))
            .collect()
    } else {
        equal
    };
    match hits.as_slice() {
        [i] => Ok(*i),
        [] => Err(format!(
            "no adapter's name contains {wanted:?}; this machine has {}",
            listed(names)
        )),
        _ => Err(format!(
            "{wanted:?} names {} adapters ({}): give more of the name",
            hits.len(),
            listed(&hits.iter().map(|&i| names[i].clone()).collect::<Vec<_>>())
        )),
    }
}

fn listed(names: &[String]) -> String {
    if names.is_empty() {
        return "none".into();
    }
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec![
            "llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan, Cpu, llvmpipe Mesa 22.3.6)".into(),
            "llvmpipe (LLVM 15.0.6, 256 bits) (Gl, Other)".into(),
            "SwiftShader Device (Subzero) (Vulkan, Cpu, SwiftShader driver)".into(),
            "NVIDIA H100 (Vulkan, DiscreteGpu, NVIDIA 550.1)".into(),
            "NVIDIA H100 NVL (Vulkan, DiscreteGpu, NVIDIA 550.1)".into(),
        ]
    }

    #[test]
    fn a_part_of_one_name_picks_it_ignoring_case() {
        assert_eq!(choose(&names(), "swiftshader"), Ok(2));
        assert_eq!(
            choose(&names(), " LLVMpipe (llvm 15.0.6, 256 bits) (vulkan"),
            Ok(0)
        );
        assert_eq!(choose(&names(), "(gl"), Ok(1));
    }

    #[test]
    fn an_exact_name_wins_over_names_that_contain_it() {
        assert_eq!(choose(&names(), "nvidia h100"), Ok(3));
        assert_eq!(choose(&names(), "NVL"), Ok(4));
    }

    #[test]
    fn several_or_no_matches_are_errors_that_name_the_adapters() {
        let e = choose(&names(), "nvidia").unwrap_err();
        assert!(
            e.contains("2 adapters") && e.contains("\"NVIDIA H100 NVL ("),
            "{e}"
        );
        let e = choose(&names(), "llvmpipe").unwrap_err();
        assert!(e.contains("2 adapters"), "{e}");
        let e = choose(&names(), "radeon").unwrap_err();
        assert!(e.contains("SwiftShader Device (Subzero)"), "{e}");
        let e = choose(&[], "radeon").unwrap_err();
        assert!(e.ends_with("none"), "{e}");
        assert!(choose(&names(), "  ").is_err());
    }
}
