//! The `metarep gist-tree` commands, run as a user would: build, read, edit, prune, restore,
//! snapshot, compact, verify and stats on a small tree.

use std::process::Command;

use serde_json::Value;

fn metarep(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_metarep"))
        .arg("gist-tree")
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let json = serde_json::from_str(&stdout).unwrap_or(Value::Null);
    (
        out.status.success(),
        json,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn build_read_edit_prune_restore_verify() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    let t = tree.to_str().unwrap();
    let ok = |args: &[&str]| {
        let (ok, json, err) = metarep(args);
        assert!(ok, "{args:?} failed: {err}");
        json
    };
    ok(&[
        "init", "--tree", t, "--block", "4", "--width", "3", "--dtype", "bf16",
    ]);
    let ids: Vec<String> = (0..40).map(|i| i.to_string()).collect();
    let j = ok(&[
        "append",
        "--tree",
        t,
        "--tokens",
        &ids.join(" "),
        "--source",
        "3",
        "--tags",
        "code",
    ]);
    assert_eq!(j["version"], 1);
    assert_eq!(j["tokens"], 40);
    let j = ok(&["range", "--tree", t, "--start", "5", "--end", "9"]);
    assert_eq!(j["tokens"], serde_json::json!([5, 6, 7, 8]));
    let j = ok(&["get", "--tree", t, "--node", "2:1"]);
    assert_eq!(j["provenance"]["tags"], serde_json::json!(["code"]));
    let before = j["data"]["Gist"].clone();
    ok(&["snapshot", "--tree", t, "--name", "v1"]);
    ok(&["edit", "--tree", t, "--start", "20", "--tokens", "99,98"]);
    let j = ok(&["range", "--tree", t, "--start", "19", "--end", "23"]);
    assert_eq!(j["tokens"], serde_json::json!([19, 99, 98, 22]));
    let j = ok(&["get", "--tree", t, "--node", "2:1", "--version", "1"]);
    assert_eq!(j["data"]["Gist"], before);
    let j = ok(&["prune", "--tree", t, "--node", "2:0"]);
    assert_eq!(j["pruned"], serde_json::json!(["2:0"]));
    let (ok_read, _, err) = metarep(&["get", "--tree", t, "--node", "0:1"]);
    assert!(!ok_read && err.contains("pruned"), "{err}");
    ok(&["restore", "--tree", t, "--node", "2:0"]);
    ok(&["get", "--tree", t, "--node", "0:1"]);
    let j = ok(&[
        "prune",
        "--tree",
        t,
        "--level",
        "1",
        "--below",
        "1",
        "--dry-run",
    ]);
    assert!(!j["would_prune"].as_array().unwrap().is_empty());
    let j = ok(&["compact", "--tree", t]);
    assert_eq!(j["floor"], 1, "the named snapshot pins version 1");
    let j = ok(&["verify", "--tree", t]);
    assert_eq!(j["problems"], serde_json::json!([]));
    let j = ok(&["stats", "--tree", t]);
    assert_eq!(j["tags"]["v1"], 1);
    assert!(j["telemetry"]["total_accesses"].as_u64().unwrap() > 0);

    // verify exits non-zero on damage and names the file.
    let seg = tree.join("gen-000002/L00/000000.seg");
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0x40;
    std::fs::write(&seg, bytes).unwrap();
    let (ok_verify, j, _) = metarep(&["verify", "--tree", t]);
    assert!(!ok_verify);
    assert!(j["problems"][0].as_str().unwrap().contains("000000.seg"));
    let (ok_missing, _, err) = metarep(&["stats"]);
    assert!(!ok_missing && err.contains("--tree"));
}

#[test]
fn a_reader_closing_the_pipe_ends_the_command_quietly() {
    // `metarep gist-tree range … | head -c 16`: the output (≈ 100 kB) outgrows the pipe's
    // buffer, the reader goes away, and the next write meets a closed pipe.
    use std::io::Read;
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    let t = tree.to_str().unwrap();
    assert!(metarep(&["init", "--tree", t, "--block", "4", "--width", "3"]).0);
    let n = 50_000;
    let ids = vec!["7"; n].join(" ");
    let (ok, _, err) = metarep(&["append", "--tree", t, "--tokens", &ids]);
    assert!(ok, "{err}");
    let mut child = Command::new(env!("CARGO_BIN_EXE_metarep"))
        .args(["gist-tree", "range", "--tree", t, "--start", "0", "--end"])
        .arg(n.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(status.code(), Some(101), "{stderr}");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert!(
            status.success() || status.signal() == Some(libc::SIGPIPE),
            "{status:?}: {stderr}"
        );
    }
}

#[test]
fn out_of_range_flags_are_named_before_any_work() {
    // Issue 23.7: NaN scores, reversed byte spans, NaN thresholds and huge widths.
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    let t = tree.to_str().unwrap();
    let (ok, _, err) = metarep(&["init", "--tree", t, "--width", "70000"]);
    assert!(!ok && err.contains("width"), "{err}");
    assert!(!tree.join("tree.json").exists());
    assert!(metarep(&["init", "--tree", t, "--block", "4", "--width", "3"]).0);
    for (flags, named) in [
        (vec!["--score", "NaN"], "score"),
        (vec!["--byte-start", "100", "--byte-end", "5"], "byte span"),
    ] {
        let mut args = vec!["append", "--tree", t, "--tokens", "1 2 3"];
        args.extend(flags);
        let (ok, _, err) = metarep(&args);
        assert!(!ok && err.contains(named), "{args:?}: {err}");
    }
    let (_, json, _) = metarep(&["stats", "--tree", t]);
    assert_eq!(json["tokens"], 0, "nothing was stored: {json}");
    let (ok, _, err) = metarep(&["prune", "--tree", t, "--level", "1", "--below", "NaN"]);
    assert!(
        !ok && err.contains("--below") && !err.contains("--level"),
        "{err}"
    );
}

/// The probe's reproduction: `commits.log` cut back by one entry. `verify` fails naming it,
/// reads and the next `append` refuse instead of cutting the lost version's records, and
/// `--discard-uncommitted` gives that version up explicitly.
#[test]
fn a_commit_log_cut_back_by_one_entry_is_refused_until_discarded() {
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    let t = tree.to_str().unwrap();
    let ids: Vec<String> = (0..400).map(|i| (i % 97).to_string()).collect();
    let ids = ids.join(" ");
    assert!(metarep(&["init", "--tree", t, "--block", "4", "--width", "3"]).0);
    for _ in 0..3 {
        let (ok, _, err) = metarep(&["append", "--tree", t, "--tokens", &ids]);
        assert!(ok, "{err}");
    }
    let log = tree.join("gen-000001/commits.log");
    let bytes = std::fs::read(&log).unwrap();
    let parsed = metarep_gist_tree::codec::parse_log(&bytes).unwrap();
    let last = parsed.items.last().unwrap().0;
    std::fs::write(&log, &bytes[..last as usize]).unwrap();

    let (ok, json, err) = metarep(&["verify", "--tree", t]);
    assert!(!ok, "verify passed a cut commit log: {json}");
    let problems = json["problems"].to_string();
    assert!(
        problems.contains("commits.log") && problems.contains("commits.end"),
        "{problems} {err}"
    );
    let (ok, _, err) = metarep(&["range", "--tree", t, "--start", "0", "--end", "4"]);
    assert!(!ok && err.contains("missing from the commit log"), "{err}");
    let (ok, _, err) = metarep(&["append", "--tree", t, "--tokens", "1 2 3"]);
    assert!(!ok && err.contains("--discard-uncommitted"), "{err}");
    let (_, json, _) = metarep(&["stats", "--tree", t]);
    assert!(json.is_null(), "stats read a damaged tree: {json}");

    let (ok, json, err) = metarep(&[
        "append",
        "--tree",
        t,
        "--tokens",
        "1 2 3",
        "--discard-uncommitted",
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("gave up versions"), "{err}");
    assert_eq!(json["version"], 3, "version 3 was given up and rewritten");
    assert_eq!(json["tokens"], 803);
    let (ok, _, err) = metarep(&["verify", "--tree", t]);
    assert!(ok, "{err}");
}

/// "Read-only" commands on a read-only mount and on a full disk (where pins and telemetry cannot
/// be written) read without writing. Needs `mount` (root); where it is refused the test says so and checks nothing.
#[test]
fn read_commands_work_on_a_read_only_mount_and_a_full_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().to_str().unwrap();
    let mount = |args: &[&str]| {
        Command::new("mount")
            .args(args)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !mount(&["-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt]) {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    }
    let t = dir.path().join("t");
    let t = t.to_str().unwrap();
    let result = std::panic::catch_unwind(|| {
        assert!(metarep(&["init", "--tree", t, "--block", "4", "--width", "3"]).0);
        let (ok, _, err) = metarep(&["append", "--tree", t, "--tokens", "1 2 3 4 5 6 7 8 9"]);
        assert!(ok, "{err}");
        assert!(mount(&["-o", "remount,ro", mnt]), "remount read-only");
        let (ok, json, err) = metarep(&["range", "--tree", t, "--start", "2", "--end", "5"]);
        assert!(ok, "range on a read-only mount: {err}");
        assert_eq!(json["tokens"], serde_json::json!([3, 4, 5]));
        for args in [
            &["get", "--tree", t, "--node", "1:0"][..],
            &["stats", "--tree", t],
            &["verify", "--tree", t],
        ] {
            let (ok, _, err) = metarep(args);
            assert!(ok, "{args:?} on a read-only mount: {err}");
        }
        let (ok, _, err) = metarep(&["append", "--tree", t, "--tokens", "1"]);
        assert!(!ok && err.contains("Read-only"), "{err}");
        // A full disk: no room for pins or telemetry either.
        assert!(mount(&["-o", "remount,rw", mnt]), "remount read-write");
        std::fs::remove_dir_all(std::path::Path::new(t).join("pins")).ok();
        std::fs::remove_file(std::path::Path::new(t).join("telemetry.log")).ok();
        let filler = dir.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 64 << 10];
        while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
        drop(f);
        for args in [
            &["range", "--tree", t, "--start", "2", "--end", "5"][..],
            &["get", "--tree", t, "--node", "1:0"],
            &["stats", "--tree", t],
            &["verify", "--tree", t],
        ] {
            let (ok, _, err) = metarep(args);
            assert!(ok, "{args:?} on a full disk: {err}");
        }
    });
    let _ = Command::new("umount").arg(mnt).status();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

#[test]
fn a_trained_gistnet_makes_the_gists_of_a_tree_built_from_the_shell() {
    use candle_core::{DType, Device, Tensor};
    use metarep_megacontext::{GistNet, GistNetConfig, Skip};
    use metarep_model::{HookedTransformer, ModelConfig};

    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("model");
    let model = HookedTransformer::random(
        ModelConfig::gpt2_like(1, 16, 2, 50, 64),
        5,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    model.save_pretrained(&model_dir).unwrap();
    let cfg = GistNetConfig {
        d_model: 16,
        block: 4,
        width: 16,
        layers: 1,
        heads: 2,
        mlp: 32,
        skip: Skip::Last,
    };
    let net = GistNet::new(cfg, 2, &Device::Cpu).unwrap();
    // Off mean pooling: a constant output projection.
    let params = net.params();
    let (_, proj) = params.iter().find(|(n, _)| n == "proj_out.weight").unwrap();
    proj.set(&(Tensor::ones(proj.dims(), DType::F32, &Device::Cpu).unwrap() * 0.05).unwrap())
        .unwrap();
    let net_dir = dir.path().join("gistnet");
    net.save(&net_dir).unwrap();
    let (m, g) = (model_dir.to_str().unwrap(), net_dir.to_str().unwrap());
    let tree = dir.path().join("t");
    let t = tree.to_str().unwrap();
    let learned = ["--gistnet", g, "--model", m];
    let run = |args: &[&str]| {
        let all: Vec<&str> = args.iter().chain(learned.iter()).copied().collect();
        metarep(&all)
    };
    let (ok, _, err) = run(&[
        "init", "--tree", t, "--block", "4", "--width", "16", "--dtype", "f32",
    ]);
    assert!(ok, "{err}");
    let ids: Vec<u32> = (0..8).map(|i| i * 6 % 50).collect();
    let text: Vec<String> = ids.iter().map(u32::to_string).collect();
    let (ok, _, err) = run(&["append", "--tree", t, "--tokens", &text.join(" ")]);
    assert!(ok, "{err}");
    let (ok, j, err) = metarep(&[
        "range", "--tree", t, "--start", "0", "--end", "2", "--level", "1",
    ]);
    assert!(ok, "{err}");
    for b in 0..2 {
        let block = Tensor::from_vec(ids[4 * b..4 * b + 4].to_vec(), (1, 4), &Device::Cpu).unwrap();
        let want = net
            .forward(&model.token_embeddings(&block).unwrap())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let got: Vec<f32> = j["gists"][b]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert!(
            got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-5),
            "block {b}: {got:?} vs {want:?}"
        );
    }
    // A tree whose width is not the model's is refused, naming the three widths.
    let other = dir.path().join("narrow");
    let o = other.to_str().unwrap();
    let (ok, _, err) = run(&["init", "--tree", o, "--block", "4", "--width", "8"]);
    assert!(!ok && err.contains("must agree"), "{err}");
    // GistNet needs the model it reads embeddings from.
    let (ok, _, err) = metarep(&["init", "--tree", o, "--gistnet", g]);
    assert!(!ok && err.contains("--model"), "{err}");
}
