//! bora-aws against moto's S3 server and the loopback Bedrock of `aws_wire`, configured the
//! way every AWS tool is: credentials, region and per-service endpoints from the environment.
//! The environment is the process's, so each test holds `ENV` while it runs.

mod aws_wire;

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use aws_wire::*;
use bora_aws::{
    check_import_dir, Aws, AwsError, FileOutcome, ImportRequest, InvokeParams, S3Location,
    UploadOptions, MIN_PART_SIZE,
};
use serde_json::json;

static ENV: Mutex<()> = Mutex::new(());

/// The test's AWS environment: test credentials, the region, `s3` and `bedrock` as the
/// endpoints, no profile files and no instance metadata.
fn aws_env(s3: &str, bedrock: &str) -> MutexGuard<'static, ()> {
    let guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    let home = std::env::temp_dir().join("bora-aws-test-home");
    for (k, v) in [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_SESSION_TOKEN", SESSION_TOKEN),
        ("AWS_REGION", REGION),
        ("AWS_MAX_ATTEMPTS", "3"),
        ("AWS_EC2_METADATA_DISABLED", "true"),
        ("AWS_ENDPOINT_URL_S3", s3),
        ("AWS_ENDPOINT_URL_BEDROCK", bedrock),
        ("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", bedrock),
    ] {
        std::env::set_var(k, v);
    }
    std::env::set_var("AWS_CONFIG_FILE", home.join("config"));
    std::env::set_var("AWS_SHARED_CREDENTIALS_FILE", home.join("credentials"));
    std::env::remove_var("AWS_PROFILE");
    std::env::remove_var("AWS_ENDPOINT_URL");
    guard
}

/// An error's text, checked for credentials.
fn text(e: &AwsError) -> String {
    let t = format!("{e} {e:?}");
    assert!(!t.contains(SECRET_KEY) && !t.contains(SESSION_TOKEN), "{t}");
    t
}

fn files(dir: &std::path::Path) -> Vec<String> {
    check_import_dir(dir).unwrap().files
}

#[test]
fn uploads_resume_broken_multipart_uploads_and_skip_what_is_there() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = merged_dir(tmp.path());
    let moto = Moto::start();
    let _env = aws_env(&moto.url(), "http://127.0.0.1:9");
    assert_eq!(moto.http("PUT", &format!("/{BUCKET}"), b"").0, 200);
    // An earlier run stopped mid-file: part 1 is the file's, part 2 damaged.
    let weights = std::fs::read(dir.join("model.safetensors")).unwrap();
    let key = format!("/{BUCKET}/runs/tiny/model.safetensors");
    let created = String::from_utf8(moto.http("POST", &format!("{key}?uploads"), b"").2).unwrap();
    let id = created
        .split("<UploadId>")
        .nth(1)
        .and_then(|s| s.split("</UploadId>").next())
        .unwrap()
        .to_owned();
    for (n, bytes) in [(1, weights[..5 * MIB].to_vec()), (2, vec![0u8; 5 * MIB])] {
        let target = format!("{key}?partNumber={n}&uploadId={id}");
        assert_eq!(moto.http("PUT", &target, &bytes).0, 200);
    }

    let aws = Aws::connect(None).unwrap();
    assert_eq!(aws.region(), REGION);
    let dest: S3Location = format!("s3://{BUCKET}/runs/tiny").parse().unwrap();
    let options = UploadOptions {
        part_size: MIN_PART_SIZE,
    };
    let names = files(&dir);
    assert_eq!(
        names,
        [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json"
        ]
    );
    let mut parts = Vec::new();
    let outcomes = aws
        .upload_dir(&dir, &names, &dest, &options, &mut |e| {
            if let bora_aws::UploadEvent::Part { part, parts: n, .. } = e {
                parts.push((part, n));
            }
        })
        .unwrap();
    assert_eq!(
        outcomes,
        [
            FileOutcome::Uploaded,
            FileOutcome::Multipart { parts: 3, kept: 1 },
            FileOutcome::Uploaded,
            FileOutcome::Uploaded
        ]
    );
    assert_eq!(parts, [(1, 3), (2, 3), (3, 3)]);
    for name in &names {
        let (status, _, bytes) = moto.http("GET", &format!("/{BUCKET}/runs/tiny/{name}"), b"");
        assert_eq!(status, 200, "{name}");
        assert!(
            bytes == std::fs::read(dir.join(name)).unwrap(),
            "{name} differs in S3"
        );
    }

    // Again, one file changed: only it is sent.
    std::fs::write(
        dir.join("tokenizer_config.json"),
        "{\"bos_token\": \"<s>\"}",
    )
    .unwrap();
    let outcomes = aws
        .upload_dir(&dir, &names, &dest, &options, &mut |_| {})
        .unwrap();
    assert_eq!(
        outcomes,
        [
            FileOutcome::Skipped,
            FileOutcome::Skipped,
            FileOutcome::Skipped,
            FileOutcome::Uploaded
        ]
    );
    // A missing bucket names the call and the code.
    let missing: S3Location = "s3://no-such-bucket/x".parse().unwrap();
    let e = aws
        .upload_dir(&dir, &names[..1], &missing, &options, &mut |_| {})
        .unwrap_err();
    let t = text(&e);
    assert!(
        t.contains("NoSuchBucket") && t.contains("s3:PutObject"),
        "{t}"
    );
}

#[test]
fn an_upload_refused_names_the_permission() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = merged_dir(tmp.path());
    let s3 = Bedrock::start(|r, _| {
        if r.method == "HEAD" {
            return s3_error(404, "NotFound", "");
        }
        s3_error(403, "AccessDenied", "Access Denied")
    });
    let _env = aws_env(&s3.url(), "http://127.0.0.1:9");
    let aws = Aws::connect(None).unwrap();
    let dest: S3Location = "s3://bora-models/x".parse().unwrap();
    let e = aws
        .upload_dir(
            &dir,
            &files(&dir),
            &dest,
            &UploadOptions::default(),
            &mut |_| {},
        )
        .unwrap_err();
    assert_eq!(e.code(), Some("AccessDenied"));
    let t = text(&e);
    assert!(
        t.starts_with("s3:PutObject failed: AccessDenied: Access Denied (the caller lacks the IAM permission `s3:PutObject`"),
        "{t}"
    );
    let sent = s3.requests();
    assert_eq!(sent.len(), 2, "HEAD, then PUT");
    assert_eq!(sent[1].method, "PUT");
    assert_eq!(sent[1].path(), "/bora-models/x/config.json");
    for r in &sent {
        assert_signed(r, "s3");
    }
    assert!(sent[1].header("content-md5").is_some());
}

#[test]
fn import_jobs_are_created_polled_and_their_failures_named() {
    let server = import_server("Completed");
    let _env = aws_env("http://127.0.0.1:9", &server.url());
    let aws = Aws::connect(None).unwrap();
    let source: S3Location = "s3://bora-models/runs/tiny".parse().unwrap();
    assert_eq!(aws.running_import("tiny-merged").unwrap(), None);
    let job = aws
        .create_import_job(&ImportRequest {
            job_name: "tiny-merged-1765000000",
            model_name: "tiny-merged",
            role_arn: ROLE,
            source: &source,
        })
        .unwrap();
    assert_eq!(job, JOB_ARN);
    let mut seen = Vec::new();
    let model = aws
        .wait_import_job(
            &job,
            Duration::ZERO,
            Duration::from_secs(60),
            &mut |s, _| seen.push(s.status.name()),
        )
        .unwrap();
    assert_eq!(model, MODEL_ARN);
    assert_eq!(seen, ["InProgress", "InProgress", "Completed"]);
    let requests = server.requests();
    for r in &requests {
        assert_signed(r, "bedrock");
    }
    assert!(path_is(&requests[0], "GET", "/model-import-jobs"));
    assert!(
        requests[0].target.contains("statusEquals=InProgress"),
        "{}",
        requests[0].target
    );
    assert!(
        requests[0].target.contains("nameContains=tiny-merged"),
        "{}",
        requests[0].target
    );
    assert!(path_is(&requests[1], "POST", "/model-import-jobs"));
    assert_eq!(
        body(&requests[1]),
        json!({"jobName": "tiny-merged-1765000000", "importedModelName": "tiny-merged",
               "roleArn": ROLE, "clientRequestToken": "tiny-merged-1765000000",
               "modelDataSource": {"s3DataSource": {"s3Uri": "s3://bora-models/runs/tiny/"}}})
    );
    let job_path = format!(
        "/model-import-jobs/{}",
        JOB_ARN.replace(':', "%3A").replace('/', "%2F")
    );
    assert!(
        path_is(&requests[2], "GET", &job_path),
        "{}",
        requests[2].target
    );

    drop(_env);
    let failing = import_server("Failed");
    let _env = aws_env("http://127.0.0.1:9", &failing.url());
    let aws = Aws::connect(None).unwrap();
    let e = aws
        .wait_import_job(
            JOB_ARN,
            Duration::ZERO,
            Duration::from_secs(60),
            &mut |_, _| {},
        )
        .unwrap_err();
    text(&e);
    assert_eq!(
        e.to_string(),
        format!("import job {JOB_ARN} failed: The model architecture or its configuration is not supported.")
    );
    // A job that outlives the wait: the error says how to find it again.
    let slow = Bedrock::start(|_, _| ok(json!({"jobArn": JOB_ARN, "status": "InProgress"})));
    drop(_env);
    let _env = aws_env("http://127.0.0.1:9", &slow.url());
    let aws = Aws::connect(None).unwrap();
    let e = aws
        .wait_import_job(
            JOB_ARN,
            Duration::from_millis(10),
            Duration::from_millis(50),
            &mut |_, _| {},
        )
        .unwrap_err();
    assert!(text(&e).contains("is still InProgress after"), "{e}");
}

#[test]
fn import_refusals_name_the_permission_and_the_quota() {
    let denied = Bedrock::start(|_, _| {
        error(403, "AccessDeniedException", "User: arn:aws:iam::123456789012:user/dev is not authorized to perform: bedrock:CreateModelImportJob")
    });
    let _env = aws_env("http://127.0.0.1:9", &denied.url());
    let aws = Aws::connect(None).unwrap();
    let source: S3Location = "s3://bora-models/m".parse().unwrap();
    let request = ImportRequest {
        job_name: "m-1",
        model_name: "m",
        role_arn: ROLE,
        source: &source,
    };
    let t = text(&aws.create_import_job(&request).unwrap_err());
    assert!(t.starts_with("bedrock:CreateModelImportJob failed: AccessDeniedException: User: arn:aws:iam::123456789012:user/dev is not authorized"), "{t}");
    assert!(
        t.contains("lacks the IAM permission `bedrock:CreateModelImportJob` and `iam:PassRole`"),
        "{t}"
    );
    assert_eq!(denied.requests().len(), 1, "AccessDenied is not retried");
    drop(_env);

    let quota = Bedrock::start(|_, _| {
        error(
            400,
            "ServiceQuotaExceededException",
            "Imported models per account: limit 3 reached",
        )
    });
    let _env = aws_env("http://127.0.0.1:9", &quota.url());
    let aws = Aws::connect(None).unwrap();
    let e = aws.create_import_job(&request).unwrap_err();
    assert_eq!(e.code(), Some("ServiceQuotaExceededException"));
    assert!(text(&e).contains("Service Quotas console"), "{e}");
    drop(_env);

    // A job in progress for the model is found among others.
    let listed = Bedrock::start(|_, _| {
        ok(json!({"modelImportJobSummaries": [
            {"jobArn": "arn:aws:bedrock:us-east-1:123456789012:model-import-job/other", "jobName": "o",
             "status": "InProgress", "importedModelName": "m-2", "creationTime": "2026-12-07T00:00:00Z"},
            {"jobArn": JOB_ARN, "jobName": "j", "status": "InProgress",
             "importedModelName": "m", "creationTime": "2026-12-07T00:00:00Z"}]}))
    });
    let _env = aws_env("http://127.0.0.1:9", &listed.url());
    let aws = Aws::connect(None).unwrap();
    assert_eq!(aws.running_import("m").unwrap().as_deref(), Some(JOB_ARN));
}

#[test]
fn invocations_retry_throttling_stream_and_report_a_cut_stream() {
    let params = InvokeParams {
        max_tokens: 12,
        temperature: 0.0,
        top_p: 0.95,
    };
    let server = Bedrock::start(|r, n| {
        if r.path().ends_with("/invoke") {
            if n == 0 {
                return error(
                    429,
                    "ThrottlingException",
                    "Too many requests, please wait before trying again.",
                );
            }
            return ok(json!({"generation": "w5 w4", "prompt_token_count": 3,
                             "generation_token_count": 2, "stop_reason": "stop"}));
        }
        let cut = n > 2;
        Reply::Events {
            messages: vec![chunk("w9 ", None), chunk("w8", Some("stop"))]
                .into_iter()
                .take(if cut { 1 } else { 2 })
                .collect(),
            cut,
        }
    });
    let _env = aws_env("http://127.0.0.1:9", &server.url());
    let aws = Aws::connect(None).unwrap();
    assert_eq!(aws.invoke(MODEL_ARN, "w4 w5 ", &params).unwrap(), "w5 w4");
    let requests = server.requests();
    assert_eq!(requests.len(), 2, "one throttled attempt, retried");
    let model_path = MODEL_ARN.replace(':', "%3A").replace('/', "%2F");
    for r in &requests {
        assert_signed(r, "bedrock");
        assert!(
            path_is(r, "POST", &format!("/model/{model_path}/invoke")),
            "{}",
            r.target
        );
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert_eq!(r.header("accept"), Some("application/json"));
        assert_eq!(
            body(r),
            json!({"prompt": "w4 w5 ", "max_gen_len": 12, "temperature": 0.0, "top_p": 0.95})
        );
    }

    let mut pieces = Vec::new();
    let whole = aws
        .invoke_stream(MODEL_ARN, "w6 ", &params, &mut |p| {
            pieces.push(p.to_owned())
        })
        .unwrap();
    assert_eq!(
        (whole.as_str(), pieces),
        ("w9 w8", vec!["w9 ".to_owned(), "w8".to_owned()])
    );
    let stream = &server.requests()[2];
    assert!(
        path_is(
            stream,
            "POST",
            &format!("/model/{model_path}/invoke-with-response-stream")
        ),
        "{}",
        stream.target
    );

    let mut shown = String::new();
    let e = aws
        .invoke_stream(MODEL_ARN, "w6 ", &params, &mut |p| shown.push_str(p))
        .unwrap_err();
    assert_eq!(shown, "w9 ");
    assert!(
        text(&e).starts_with(&format!(
            "the response stream of {MODEL_ARN} broke after 3 characters"
        )),
        "{e}"
    );
    drop(_env);

    // Throttled on every attempt: the error names it and what to do.
    let throttled =
        Bedrock::start(|_, _| error(429, "ThrottlingException", "Too many tokens per minute"));
    let _env = aws_env("http://127.0.0.1:9", &throttled.url());
    let aws = Aws::connect(None).unwrap();
    let e = aws.invoke(MODEL_ARN, "x", &params).unwrap_err();
    let t = text(&e);
    assert!(
        t.starts_with(
            "bedrock:InvokeModel failed: ThrottlingException: Too many tokens per minute"
        ),
        "{t}"
    );
    assert!(t.contains("AWS_MAX_ATTEMPTS"), "{t}");
    assert_eq!(throttled.requests().len(), 3, "AWS_MAX_ATTEMPTS=3 attempts");
}

#[test]
fn directories_are_checked_against_the_import_requirements() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = merged_dir(tmp.path());
    let ok_check = check_import_dir(&dir).unwrap();
    assert_eq!(ok_check.architecture, "MistralForCausalLM");
    assert!(ok_check.warnings.is_empty());
    let err = |dir: &std::path::Path| check_import_dir(dir).unwrap_err().to_string();

    std::fs::write(dir.join("pytorch_model.bin"), b"pickle").unwrap();
    assert!(err(&dir).ends_with("pytorch_model.bin: Bedrock imports weights in safetensors only; remove this file (bora's merged export writes safetensors)"), "{}", err(&dir));
    std::fs::remove_file(dir.join("pytorch_model.bin")).unwrap();

    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["GPT2LMHeadModel"]}"#,
    )
    .unwrap();
    assert!(
        err(&dir)
            .contains("architecture `GPT2LMHeadModel` is not one Custom Model Import supports"),
        "{}",
        err(&dir)
    );
    std::fs::write(
        dir.join("config.json"),
        r#"{"architectures": ["LlamaForCausalLM"], "max_position_embeddings": 1024000}"#,
    )
    .unwrap();
    assert_eq!(check_import_dir(&dir).unwrap().warnings.len(), 1);

    write_safetensors(&dir.join("model.safetensors"), "I16", 8);
    assert!(
        err(&dir).contains("tensor `w` is I16: Bedrock imports FP32, FP16 and BF16 weights only"),
        "{}",
        err(&dir)
    );
    write_safetensors(&dir.join("model.safetensors"), "F16", 8);

    std::fs::create_dir(dir.join("sub")).unwrap();
    assert!(
        err(&dir).contains("sub: Custom Model Import reads the files of one folder"),
        "{}",
        err(&dir)
    );
    std::fs::remove_dir(dir.join("sub")).unwrap();

    std::fs::remove_file(dir.join("tokenizer_config.json")).unwrap();
    assert!(
        err(&dir).contains("tokenizer_config.json: missing"),
        "{}",
        err(&dir)
    );
}
