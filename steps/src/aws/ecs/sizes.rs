//! The sizes Fargate offers: CPU units and, for each, the memory it allows. A job's
//! `run.cpu` and `run.memory` are checked against these at submission, so a size ECS
//! would refuse is a 400 naming the field, not a failed run.

/// Fargate's allowed CPU units and, for each, the memory sizes in MiB it allows.
pub fn fargate_memory_allowed(cpu: u32, memory: u32) -> bool {
    let gib = |n: u32| n * 1024;
    match cpu {
        256 => [512, 1024, 2048].contains(&memory),
        512 => (gib(1)..=gib(4)).contains(&memory) && memory.is_multiple_of(1024),
        1024 => (gib(2)..=gib(8)).contains(&memory) && memory.is_multiple_of(1024),
        2048 => (gib(4)..=gib(16)).contains(&memory) && memory.is_multiple_of(1024),
        4096 => (gib(8)..=gib(30)).contains(&memory) && memory.is_multiple_of(1024),
        8192 => (gib(16)..=gib(60)).contains(&memory) && memory.is_multiple_of(gib(4)),
        16384 => (gib(32)..=gib(120)).contains(&memory) && memory.is_multiple_of(gib(8)),
        _ => false,
    }
}

/// The memory sizes Fargate allows with `cpu`, in words.
pub fn fargate_memory_choices(cpu: u32) -> String {
    match cpu {
        256 => "512, 1024 or 2048 MiB".into(),
        512 | 1024 | 2048 | 4096 => {
            let low = if cpu == 512 { 1024 } else { cpu * 2 };
            let high = if cpu == 4096 { 30720 } else { cpu * 8 };
            format!("{low} to {high} MiB in steps of 1024")
        }
        8192 => "16384 to 61440 MiB in steps of 4096".into(),
        16384 => "32768 to 122880 MiB in steps of 8192".into(),
        _ => "no memory size (not a Fargate CPU size)".into(),
    }
}

/// The CPU values Fargate allows, for messages.
pub const FARGATE_CPU: [u32; 7] = [256, 512, 1024, 2048, 4096, 8192, 16384];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fargate_sizes() {
        assert!(fargate_memory_allowed(256, 512));
        assert!(!fargate_memory_allowed(256, 4096));
        assert!(fargate_memory_allowed(1024, 3072));
        assert!(!fargate_memory_allowed(1024, 3000));
        assert!(fargate_memory_allowed(8192, 20480));
        assert!(!fargate_memory_allowed(8192, 18432));
        assert!(!fargate_memory_allowed(300, 512));
        // The words agree with the check at both ends of each range.
        assert_eq!(fargate_memory_choices(1024), "2048 to 8192 MiB in steps of 1024");
        assert!(fargate_memory_allowed(1024, 2048) && fargate_memory_allowed(1024, 8192));
        assert_eq!(fargate_memory_choices(512), "1024 to 4096 MiB in steps of 1024");
        assert_eq!(fargate_memory_choices(4096), "8192 to 30720 MiB in steps of 1024");
        assert!(fargate_memory_allowed(4096, 30720) && !fargate_memory_allowed(4096, 31744));
    }
}
