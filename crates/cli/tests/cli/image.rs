//! The container image, built without an engine (deploy/image/build-oci.sh) from the very
//! `ferry` binary under test: skopeo reads the OCI layout, umoci unpacks it (rootless), and the
//! unpacked root filesystem alone runs `ferry server` (chroot in a user namespace): it answers
//! OIP requests on loopback, as the non-root user the image names.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn run(command: &mut Command) -> String {
    let out = command.output().expect("the command runs");
    assert!(
        out.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn the_oci_image_inspects_unpacks_and_serves() {
    if !(have("skopeo") && have("umoci")) {
        assert!(
            std::env::var_os("FERRY_REQUIRE_OCI").is_none(),
            "skopeo and umoci are required (apt-get install skopeo umoci; make test does)"
        );
        eprintln!("SKIPPED: skopeo or umoci missing");
        return;
    }
    let work = std::env::temp_dir().join(format!("ferry-image-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).unwrap();
    let layout = work.join("oci");
    run(Command::new(repo().join("deploy/image/build-oci.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_ferry"), "--tag", "test"])
        .arg(&layout));

    let inspect: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:test", layout.display()))))
    .unwrap();
    assert_eq!(inspect["Architecture"], "amd64");
    assert_eq!(inspect["Os"], "linux");
    assert_eq!(inspect["Layers"].as_array().unwrap().len(), 1);
    assert_eq!(
        inspect["Labels"]["org.opencontainers.image.licenses"],
        "Apache-2.0"
    );

    let bundle = work.join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle));
    let runtime: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("config.json")).unwrap()).unwrap();
    assert_eq!(runtime["process"]["user"]["uid"], 65532, "non-root");
    assert_eq!(runtime["process"]["args"][0], "/usr/local/bin/ferry");
    let rootfs = bundle.join("rootfs");
    std::fs::copy(
        repo().join("models/iris-v1.onnx"),
        rootfs.join("tmp/iris.onnx"),
    )
    .unwrap();

    // The unpacked filesystem is all the binary gets: chroot into it (a user namespace makes
    // that possible without privileges) and serve on loopback.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new("unshare")
        .args(["--user", "--map-root-user", "chroot"])
        .arg(&rootfs)
        .args([
            "/usr/local/bin/ferry",
            "server",
            "--model",
            "iris=/tmp/iris.onnx",
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--grpc-addr",
            "127.0.0.1:0",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("unshare runs");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = http
            .get(format!("http://127.0.0.1:{port}/v2/models/iris/ready"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200);
        if ready {
            break;
        }
        assert!(
            server.try_wait().unwrap().is_none(),
            "the server in the image exited"
        );
        assert!(
            Instant::now() < deadline,
            "the server in the image never got ready"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer: serde_json::Value = http
        .post(format!("http://127.0.0.1:{port}/v2/models/iris/infer"))
        .json(
            &serde_json::json!({"inputs": [{"name": "input", "shape": [1, 4],
            "datatype": "FP32", "data": [5.1, 3.5, 1.4, 0.2]}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(answer["outputs"].is_array(), "{answer}");
    let _ = std::fs::remove_dir_all(&work);
}
