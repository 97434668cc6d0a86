//! `bora deploy bedrock`, `bora chat --bedrock` and `bora eval --bedrock` against a real S3
//! implementation (moto's server) and a loopback Bedrock (`bora-aws/tests/aws_wire`),
//! checking each request the AWS SDK sends (method, path, JSON body, a SigV4 `Authorization`
//! header that names the access key and never holds the secret). Endpoints, region and credentials reach the binary the way they reach every
//! AWS tool: `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL_BEDROCK`,
//! `AWS_ENDPOINT_URL_BEDROCK_RUNTIME`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`...

#[path = "../../bora-aws/tests/aws_wire/mod.rs"]
mod aws_wire;

#[allow(dead_code)]
mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use aws_wire::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------------------------------
// The binary

/// `bora ARGS` with AWS configuration from the environment only: test credentials,
/// the region, the endpoints, no profile files and no instance metadata.
fn bora_aws(args: &[&str], s3: Option<&str>, bedrock: &str, stdin: &str) -> Output {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bora"));
    cmd.args(args)
        .env_remove("RUST_BACKTRACE")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL")
        .env("HOME", home.path())
        .env("AWS_CONFIG_FILE", home.path().join("config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            home.path().join("credentials"),
        )
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        .env("AWS_SESSION_TOKEN", SESSION_TOKEN)
        .env("AWS_REGION", REGION)
        .env("AWS_MAX_ATTEMPTS", "3")
        .env("AWS_ENDPOINT_URL_BEDROCK", bedrock)
        .env("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock)
        .env("AWS_ENDPOINT_URL_S3", s3.unwrap_or(bedrock))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("bora runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !text.contains(SECRET_KEY) && !text.contains(SESSION_TOKEN),
        "a credential reached the output:\n{text}"
    );
    out
}

/// Whether `text` has the upload line `  NAME (SIZE): OUTCOME`.
fn has_line(text: &str, name: &str, outcome: &str) -> bool {
    text.lines()
        .any(|l| l.starts_with(&format!("  {name} (")) && l.ends_with(&format!("): {outcome}")))
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `bora deploy bedrock --dir DIR --bucket DEST` with 5 MiB parts and quick polling.
fn deploy(dir: &Path, dest: &str, s3: Option<&str>, bedrock: &Bedrock) -> Output {
    let args = [
        "deploy",
        "bedrock",
        "--dir",
        dir.to_str().unwrap(),
        "--bucket",
        dest,
        "--role-arn",
        ROLE,
        "--part-size-mib",
        "5",
        "--poll-seconds",
        "0.05",
    ];
    bora_aws(&args, s3, &bedrock.url(), "")
}

#[test]
fn deploy_uploads_skips_what_is_there_and_imports() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = merged_dir(tmp.path());
    let moto = Moto::start();
    assert_eq!(moto.http("PUT", &format!("/{BUCKET}"), b"").0, 200);
    let dest = format!("s3://{BUCKET}/runs/tiny");
    let server = import_server("Completed");
    let out = deploy(&dir, &dest, Some(&moto.url()), &server);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("MistralForCausalLM, 4 files"), "{text}");
    assert!(
        has_line(&text, "model.safetensors", "uploaded in 3 parts"),
        "{text}"
    );
    assert!(has_line(&text, "config.json", "uploaded"), "{text}");
    assert!(
        text.contains(&format!("import job {JOB_ARN} started")),
        "{text}"
    );
    assert!(
        text.contains("  InProgress after") && text.contains("  Completed after"),
        "{text}"
    );
    assert!(
        text.contains(&format!("imported model: {MODEL_ARN}")),
        "{text}"
    );
    let (status, _, bytes) = moto.http(
        "GET",
        &format!("/{BUCKET}/runs/tiny/model.safetensors"),
        b"",
    );
    assert_eq!(status, 200);
    assert!(bytes == std::fs::read(dir.join("model.safetensors")).unwrap());
    let create: Vec<_> = server
        .requests()
        .into_iter()
        .filter(|r| path_is(r, "POST", "/model-import-jobs"))
        .collect();
    assert_eq!(create.len(), 1);
    let b = body(&create[0]);
    assert_eq!(b["importedModelName"], "tiny-merged");
    assert_eq!(
        b["modelDataSource"]["s3DataSource"]["s3Uri"],
        format!("s3://{BUCKET}/runs/tiny/")
    );
    let job_name = b["jobName"].as_str().unwrap();
    assert!(job_name.starts_with("tiny-merged-"), "{job_name}");

    // Again, one file changed: only that one is sent.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        "{\"bos_token\": \"<s>\"}",
    )
    .unwrap();
    let out = deploy(&dir, &dest, Some(&moto.url()), &import_server("Completed"));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for name in ["model.safetensors", "config.json", "tokenizer.json"] {
        let skipped = has_line(&text, name, "already in S3 with the same bytes, skipped");
        assert!(skipped, "{text}");
    }
    assert!(
        has_line(&text, "tokenizer_config.json", "uploaded"),
        "{text}"
    );
}

#[test]
fn deploy_checks_the_directory_before_any_request_and_names_a_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = merged_dir(tmp.path());
    let unused = Bedrock::start(|_, _| error(500, "InternalServerException", "unexpected"));
    std::fs::write(dir.join("pytorch_model.bin"), b"pickle").unwrap();
    let out = deploy(&dir, "s3://bora-models/x", None, &unused);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("pytorch_model.bin: Bedrock imports weights in safetensors only"),
        "{err}"
    );
    assert!(
        unused.requests().is_empty(),
        "a request was sent before the checks passed"
    );
    std::fs::remove_file(dir.join("pytorch_model.bin")).unwrap();

    // Import refused: the error names the action and iam:PassRole.
    let moto = Moto::start();
    assert_eq!(moto.http("PUT", &format!("/{BUCKET}"), b"").0, 200);
    let dest = format!("s3://{BUCKET}/m");
    let denied = Bedrock::start(|r, _| {
        if path_is(r, "GET", "/model-import-jobs") {
            return ok(json!({ "modelImportJobSummaries": [] }));
        }
        error(403, "AccessDeniedException", "User: arn:aws:iam::123456789012:user/dev is not authorized to perform: bedrock:CreateModelImportJob")
    });
    let out = deploy(&dir, &dest, Some(&moto.url()), &denied);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bedrock:CreateModelImportJob failed: AccessDeniedException"),
        "{err}"
    );
    assert!(
        err.contains("`bedrock:CreateModelImportJob` and `iam:PassRole`"),
        "{err}"
    );

    // A job already running for this model is waited for, not started twice.
    let running = Bedrock::start(|r, _| {
        if path_is(r, "GET", "/model-import-jobs") {
            return ok(json!({ "modelImportJobSummaries": [
                {"jobArn": JOB_ARN, "jobName": "j", "status": "InProgress",
                 "importedModelName": "tiny-merged", "creationTime": "2026-12-07T00:00:00Z"}]}));
        }
        ok(json!({"jobArn": JOB_ARN, "status": "Completed", "importedModelArn": MODEL_ARN}))
    });
    let out = deploy(&dir, &dest, Some(&moto.url()), &running);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "import job {JOB_ARN} for tiny-merged is already running"
        )),
        "{text}"
    );
    assert!(!running.requests().iter().any(|r| r.method == "POST"));
}

#[test]
fn chat_streams_from_the_imported_model_and_reports_a_cut_stream() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_dir(tmp.path(), "llama");
    let server = Bedrock::start(|r, n| {
        assert!(
            path_is(
                r,
                "POST",
                &format!(
                    "/model/{}/invoke-with-response-stream",
                    MODEL_ARN.replace(':', "%3A").replace('/', "%2F")
                )
            ),
            "{}",
            r.target
        );
        if n == 0 {
            Reply::Events {
                messages: vec![chunk("w9 ", None), chunk("w8", Some("stop"))],
                cut: false,
            }
        } else {
            Reply::Events {
                messages: vec![chunk("w7 ", None)],
                cut: true,
            }
        }
    });
    let args = [
        "chat",
        "--bedrock",
        MODEL_ARN,
        "--model",
        model.to_str().unwrap(),
        "--max-tokens",
        "12",
        "--temperature",
        "0",
    ];
    let out = bora_aws(&args, None, &server.url(), "w4 w5\nw6\n");
    assert!(!out.status.success());
    let text = stdout(&out);
    assert!(text.starts_with("w9 w8\nw7 "), "{text}");
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the response stream of {MODEL_ARN} broke after 3 characters"
        )),
        "{err}"
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        assert_signed(r, "bedrock");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }
    // The prompt is the conversation in the model's chat template, as its tokenizer reads it
    // (this word-level tokenizer keeps no trailing space); the second turn carries the first
    // answer.
    assert_eq!(
        body(&requests[0]),
        json!({"prompt": "w4 w5", "max_gen_len": 12, "temperature": 0.0, "top_p": 0.95})
    );
    assert_eq!(body(&requests[1])["prompt"], "w4 w5 w9 w8 w6");
}

#[test]
fn eval_scores_the_deployed_model_beside_the_local_one_and_survives_throttling() {
    let tmp = tempfile::tempdir().unwrap();
    let model = common::model_dir(tmp.path(), "llama");
    let data = tmp.path().join("test.jsonl");
    common::write_chats(&data, 4);
    // The first call is throttled (and retried by the SDK); then every other answer is the
    // expected one (the prompt's words reversed).
    let server = Bedrock::start(|r, n| {
        assert!(r.path().ends_with("/invoke"), "{}", r.target);
        if n == 0 {
            return error(
                429,
                "ThrottlingException",
                "Too many requests, please wait before trying again.",
            );
        }
        let prompt = body(r)["prompt"].as_str().unwrap().to_owned();
        let reversed: Vec<&str> = prompt.split_whitespace().rev().collect();
        let text = if n % 2 == 1 {
            reversed.join(" ")
        } else {
            "w3".into()
        };
        ok(
            json!({"generation": text, "prompt_token_count": 3, "generation_token_count": 3, "stop_reason": "stop"}),
        )
    });
    let out_dir = tmp.path().join("eval");
    let args = [
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--bedrock",
        MODEL_ARN,
        "--max-tokens",
        "6",
        "--out",
        out_dir.to_str().unwrap(),
        "--json",
    ];
    let out = bora_aws(&args, None, &server.url(), "");
    assert!(out.status.success(), "{}", stderr(&out));
    let summary: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(summary["deployed"]["score"], 0.5, "{summary}");
    assert_eq!(server.requests().len(), 5);
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("results.json")).unwrap())
            .unwrap();
    assert_eq!(results["deployed"]["model"], MODEL_ARN);
    assert_eq!(results["deployed"]["correct"], 2);
    let html = std::fs::read_to_string(out_dir.join("report.html")).unwrap();
    assert!(html.contains("deployed") && html.contains(MODEL_ARN));

    // Throttled on every attempt: the error names the throttling and what to do.
    let server =
        Bedrock::start(|_, _| error(429, "ThrottlingException", "Too many tokens per minute"));
    let out = bora_aws(&args, None, &server.url(), "");
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("bedrock:InvokeModel failed: ThrottlingException: Too many tokens per minute"),
        "{err}"
    );
    assert!(err.contains("AWS_MAX_ATTEMPTS"), "{err}");
    assert_eq!(server.requests().len(), 3, "AWS_MAX_ATTEMPTS=3 attempts");
}
