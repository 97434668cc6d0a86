use serde::{Deserialize, Serialize};

use crate::error::{Result, RunError};
use crate::layout::RunDir;

/// `timing.json`: wall time spent training, summed over every session of a resumed run up
/// to its last checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub steps: u64,
    pub train_seconds: f64,
    pub seconds_per_step: f64,
}

impl Timing {
    pub fn write(&self, run: &RunDir) -> Result<()> {
        let path = run.timing_path();
        let json = serde_json::to_string_pretty(self).map_err(|e| RunError::Invalid {
            path: path.clone(),
            what: e.to_string(),
        })?;
        Ok(bora_formats::atomic::write_file(&path, json.as_bytes())?)
    }

    /// The run's timing; `None` when it has none (training did not finish, or the file
    /// cannot be read).
    pub fn read(run: &RunDir) -> Result<Option<Self>> {
        let path = run.timing_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(|e| RunError::Invalid {
                    path,
                    what: e.to_string(),
                }),
            Err(_) => Ok(None),
        }
    }
}
