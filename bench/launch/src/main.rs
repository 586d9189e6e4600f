//! `bench-launch`: how long a Docker bottle takes to run `true`, against
//! baselines measured in the same run on the same engine:
//!
//! * **docker run** — `docker run --rm IMAGE true` (the default bridge
//!   network, no proxy), the reference for the goal;
//! * **docker run, no network** — `docker run --rm --network none IMAGE
//!   true`: one container and no network endpoint at all, the floor;
//! * **CLI topology** — what bot-bottle sets up, done by hand with the
//!   docker CLI: an internal network, a sidecar (here `sleep`, not a proxy)
//!   on it and on a long-lived egress network made once before the runs
//!   (as bottles share one), the agent on the internal one running `true`,
//!   then removal of all of it but the egress network;
//! * **bottle run** — `bottle run -f MANIFEST`, the whole flow including
//!   plan, CA generation, proxy start-up and teardown.
//!
//! Usage: `bench-launch [--runs N] --bottle PATH --manifest PATH --image IMAGE
//! [--bottle-b PATH]` (run `scripts/bench-launch.sh` to build everything and
//! call it). `--bottle-b` adds a second `bottle` (another build, with its
//! plugins beside it) to the same interleaved runs, for an A/B of two
//! builds. Prints a table of median/p90 and the ratios; never asserts a
//! time.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn sh(args: &[&str]) {
    let status = Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawning");
    assert!(status.success(), "{args:?} failed");
}

/// Removes a network when dropped: at the end, and when a failed step
/// panics, so that no run leaves one behind.
struct RemoveNetwork(String);

impl Drop for RemoveNetwork {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["network", "rm", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

fn time(f: &mut dyn FnMut()) -> Duration {
    let t = Instant::now();
    f();
    t.elapsed()
}

fn stats(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[(v.len() * 9 / 10).min(v.len() - 1)])
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let runs: usize = get("--runs").and_then(|s| s.parse().ok()).unwrap_or(10);
    let bottle = get("--bottle").expect("--bottle PATH");
    let manifest = get("--manifest").expect("--manifest PATH");
    let image = get("--image").expect("--image IMAGE");
    let sidecar_image = get("--sidecar-image").unwrap_or_else(|| image.clone());
    let bottle_b = get("--bottle-b");

    let mut plain = || sh(&["docker", "run", "--rm", &image, "true"]);
    let mut plain_none = || sh(&["docker", "run", "--rm", "--network", "none", &image, "true"]);
    // The egress side every sidecar shares, as bottles share theirs.
    let egr = format!("bench-topo-{}-egress", std::process::id());
    sh(&[
        "docker",
        "network",
        "create",
        "-o",
        "com.docker.network.bridge.enable_icc=false",
        &egr,
    ]);
    let _egr_removed = RemoveNetwork(egr.clone());
    let mut topo_n = 0u32;
    let mut topology = || {
        topo_n += 1;
        let id = format!("bench-topo-{}-{topo_n}", std::process::id());
        let (int, side) = (format!("{id}-int"), format!("{id}-side"));
        sh(&["docker", "network", "create", "--internal", &int]);
        sh(&[
            "docker",
            "run",
            "-d",
            "--name",
            &side,
            "--network",
            &int,
            &sidecar_image,
            "sleep",
            "60",
        ]);
        sh(&["docker", "network", "connect", &egr, &side]);
        sh(&[
            "docker",
            "run",
            "--rm",
            "--network",
            &int,
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            &image,
            "true",
        ]);
        sh(&["docker", "rm", "-f", &side]);
        sh(&["docker", "network", "rm", &int]);
    };
    let mut bottle_run = || sh(&[&bottle, "run", "-f", &manifest]);
    let mut bottle_run_b = || {
        if let Some(b) = &bottle_b {
            sh(&[b, "run", "-f", &manifest])
        }
    };

    // One warm-up each: image caches, the sidecar image build.
    plain();
    plain_none();
    topology();
    bottle_run();
    bottle_run_b();

    let mut results: Vec<(&str, Vec<Duration>)> = vec![
        ("docker run --rm", vec![]),
        ("  --network none", vec![]),
        ("CLI topology", vec![]),
        ("bottle run", vec![]),
        ("bottle run (B)", vec![]),
    ];
    for i in 0..runs {
        // Interleaved so drift on a shared machine hits all alike; the two
        // bottles swap places every run so neither always follows the same
        // peer.
        results[0].1.push(time(&mut plain));
        results[1].1.push(time(&mut plain_none));
        results[2].1.push(time(&mut topology));
        if bottle_b.is_some() && i % 2 == 1 {
            results[4].1.push(time(&mut bottle_run_b));
            results[3].1.push(time(&mut bottle_run));
        } else {
            results[3].1.push(time(&mut bottle_run));
            if bottle_b.is_some() {
                results[4].1.push(time(&mut bottle_run_b));
            }
        }
    }
    if bottle_b.is_none() {
        results.pop();
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("launch latency of `true`, {runs} runs each, interleaved\n");
    println!("{:<18} {:>10} {:>10}", "", "median ms", "p90 ms");
    let mut medians = Vec::new();
    for (name, v) in results {
        let (p50, p90) = stats(v);
        medians.push(p50);
        println!("{name:<18} {:>10.0} {:>10.0}", ms(p50), ms(p90));
    }
    println!();
    let bottles: &[(usize, &str)] = if medians.len() > 4 {
        &[(3, "bottle run"), (4, "bottle (B)")]
    } else {
        &[(3, "bottle run")]
    };
    for &(i, name) in bottles {
        println!(
            "{name} / docker run             = {:.2}x  (goal <= 1.5x)",
            ms(medians[i]) / ms(medians[0])
        );
        println!(
            "{name} / docker run --net none  = {:.2}x",
            ms(medians[i]) / ms(medians[1])
        );
        println!(
            "{name} / CLI topology           = {:.2}x  (goal < 1.0x)",
            ms(medians[i]) / ms(medians[2])
        );
    }
}
