//! A deployed copy of the fine-tune (the merged export imported into a serving service such
//! as Amazon Bedrock) as a third side of an evaluation: its answers to the same prompts,
//! scored by the same metric, so the report shows whether the deployment answers as the
//! local model does. Only the answers come back from a service, so this side has no NLL.

use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::eval::{EvalResults, SampleRow};
use crate::metric::{wilson, Metric, Z95};

/// The deployed side's score, with its 95% Wilson interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployedScore {
    /// What was called, e.g. the imported model's ARN.
    pub model: String,
    pub score: f64,
    pub correct: usize,
    pub ci95: [f64; 2],
}

/// One deployed answer, for the example on line `line` of the test file.
#[derive(Debug, Clone, PartialEq)]
pub struct DeployedAnswer {
    pub line: usize,
    pub text: String,
}

/// Scores `answers` (one per sample, in the samples' order) with `metric` and adds them to
/// the results and the samples. An answer for another line than its sample's is an error:
/// the two passes must have read the same examples.
pub fn add_deployed(
    results: &mut EvalResults,
    samples: &mut [SampleRow],
    metric: &Metric,
    model: &str,
    answers: &[DeployedAnswer],
) -> Result<()> {
    if answers.len() != samples.len() {
        return Err(EvalError::Decoding {
            what: format!(
                "{} deployed answers for {} examples",
                answers.len(),
                samples.len()
            ),
        });
    }
    let mut correct = 0;
    for (sample, answer) in samples.iter_mut().zip(answers) {
        if sample.line != answer.line {
            return Err(EvalError::Decoding {
                what: format!(
                    "the deployed answer for line {} was given for the example on line {}",
                    answer.line, sample.line
                ),
            });
        }
        let right = metric.score(&answer.text, &sample.expected);
        correct += usize::from(right);
        sample.deployed = Some(answer.text.clone());
        sample.deployed_score = Some(if right { 1.0 } else { 0.0 });
    }
    let (lo, hi) = wilson(correct, answers.len(), Z95);
    results.deployed = Some(DeployedScore {
        model: model.to_owned(),
        score: correct as f64 / answers.len().max(1) as f64,
        correct,
        ci95: [lo, hi],
    });
    Ok(())
}
