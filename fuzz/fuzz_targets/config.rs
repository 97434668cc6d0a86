//! A run config file and `--set`-style overrides, as `bora train --config F --KEY VALUE`
//! takes them: a config or an error naming the key, never a panic; a config that validates
//! survives its own round trip through the file the run directory keeps. Input: the TOML
//! text, then one `KEY=VALUE` override per line after a NUL byte.
#![no_main]

use bora_train::RunConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (file, overrides) = text.split_once('\0').unwrap_or((text, ""));
    // An unreadable file still lets the overrides be tried, on the defaults.
    let mut config = toml::from_str::<RunConfig>(file)
        .or_else(|_| toml::from_str::<RunConfig>(""))
        .expect("the defaults read");
    let _ = config.validate();
    for line in overrides.lines() {
        let (key, value) = line.split_once('=').unwrap_or((line, ""));
        let _ = config.apply_override(key, value);
    }
    if config.validate().is_ok() {
        let saved = config.to_toml().expect("a valid config serializes");
        let back = RunConfig::from_toml(&saved).expect("the saved config reads back");
        assert!(back.same_run(&config), "{saved}");
    }
});
