//! Kubernetes resource quantities (`500m`, `2Gi`, `1e3`), checked before anything is applied.
//!
//! A quantity the API server refuses (`cpu: lots`, `size: "a lot"`, a memory limit of
//! `"12 parsecs"`) would otherwise pass admission (the CRD keeps them as strings) and fail every
//! apply; a request above its limit likewise. `check_spec` finds them all, with the field path.

use serde_json::Value;

/// The value of a quantity, approximately (enough to compare a request with its limit), or
/// None when `s` is not a quantity in the API server's grammar:
/// `[+-]? (digits | digits.digits? | .digits) (Ki|Mi|Gi|Ti|Pi|Ei | m|k|M|G|T|P|E | [eE][+-]?digits)?`
pub fn parse(s: &str) -> Option<f64> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1.0, &s[1..]),
        b'-' => (-1.0, &s[1..]),
        _ => (1.0, s),
    };
    let number_len = rest
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b'.')
        .count();
    let (number, suffix) = rest.split_at(number_len);
    let dots = number.bytes().filter(|b| *b == b'.').count();
    let digits = number.len() - dots;
    if digits == 0 || dots > 1 {
        return None;
    }
    let mantissa: f64 = if number.ends_with('.') {
        number.trim_end_matches('.').parse().ok()?
    } else if number.starts_with('.') {
        format!("0{number}").parse().ok()?
    } else {
        number.parse().ok()?
    };
    let factor = match suffix {
        "" => 1.0,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        exp if exp.starts_with(['e', 'E']) => {
            let e = &exp[1..];
            let unsigned = e.strip_prefix(['+', '-']).unwrap_or(e);
            if unsigned.is_empty() || !unsigned.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            10f64.powi(e.parse::<i32>().ok()?)
        }
        _ => return None,
    };
    Some(sign * mantissa * factor)
}

/// Keys whose string values are quantities wherever they appear in a spec (pod overrides
/// included): volume sizes and the memory-backed volume limits.
const SIZE_KEYS: &[&str] = &[
    "size",
    "shmSize",
    "maxRamDiskSize",
    "archiveScratchSize",
    "sizeLimit",
];

/// Every quantity in a spec (as JSON): `resources.limits`/`resources.requests` values and the
/// sizes above, none negative, and no request above its limit. The error names the field.
pub fn check_spec(spec: &Value) -> Result<(), String> {
    walk(spec, "spec")
}

fn walk(v: &Value, path: &str) -> Result<(), String> {
    match v {
        Value::Object(map) => {
            for (k, child) in map {
                let here = format!("{path}.{k}");
                if k == "resources"
                    && let Value::Object(r) = child
                {
                    check_resources(r, &here)?;
                } else if SIZE_KEYS.contains(&k.as_str())
                    && let Value::String(s) = child
                {
                    check_one(s, &here)?;
                }
                walk(child, &here)?;
            }
            Ok(())
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                walk(child, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

fn check_one(s: &str, path: &str) -> Result<f64, String> {
    match parse(s) {
        Some(q) if q < 0.0 => Err(format!("{path} {s:?} must not be negative")),
        Some(q) => Ok(q),
        None => Err(format!(
            "{path} {s:?} is not a quantity (such as 500m, 2, 512Mi or 10Gi)"
        )),
    }
}

fn value_of(v: &Value, path: &str) -> Result<Option<f64>, String> {
    match v {
        Value::String(s) => check_one(s, path).map(Some),
        Value::Number(n) => check_one(&n.to_string(), path).map(Some),
        _ => Ok(None),
    }
}

fn check_resources(r: &serde_json::Map<String, Value>, path: &str) -> Result<(), String> {
    let map = |k: &str| r.get(k).and_then(Value::as_object);
    if let Some(limits) = map("limits") {
        for (k, v) in limits {
            value_of(v, &format!("{path}.limits.{k}"))?;
        }
    }
    if let Some(requests) = map("requests") {
        for (k, v) in requests {
            let Some(request) = value_of(v, &format!("{path}.requests.{k}"))? else {
                continue;
            };
            let limit = map("limits")
                .and_then(|l| l.get(k))
                .map(|l| value_of(l, &format!("{path}.limits.{k}")))
                .transpose()?
                .flatten();
            if let Some(limit) = limit
                && request > limit
            {
                return Err(format!(
                    "{path}.requests.{k} must not exceed {path}.limits.{k}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_servers_grammar() {
        for (s, v) in [
            ("1", 1.0),
            ("500m", 0.5),
            ("2Gi", 2.0 * 1024f64.powi(3)),
            ("1.5", 1.5),
            ("1.", 1.0),
            (".5", 0.5),
            ("+3k", 3000.0),
            ("1e3", 1000.0),
            ("1E-3", 0.001),
            ("-1", -1.0),
        ] {
            assert_eq!(parse(s), Some(v), "{s}");
        }
        for s in [
            "",
            "lots",
            "a lot",
            "12 parsecs",
            "1.2.3",
            "Gi",
            ".",
            "1gi",
            "1Ki ",
            " 1",
            "1e",
            "1e+",
            "1ee",
            "1KiB",
            "--1",
            "1,5",
        ] {
            assert_eq!(parse(s), None, "{s:?}");
        }
    }

    #[test]
    fn specs_are_checked_field_by_field() {
        let ok = serde_json::json!({
            "api": {"resources": {"requests": {"cpu": "500m", "memory": 1073741824u64}, "limits": {"cpu": 2, "memory": "2Gi"}}},
            "postgres": {"inCluster": {"storage": {"size": "100Gi"}}},
            "ui": {"podOverrides": {"spec": {"volumes": [{"name": "x", "emptyDir": {"sizeLimit": "1Gi"}}]}}},
        });
        assert_eq!(check_spec(&ok), Ok(()));
        for (bad, field) in [
            (
                serde_json::json!({"api": {"resources": {"requests": {"cpu": "lots"}}}}),
                "spec.api.resources.requests.cpu \"lots\"",
            ),
            (
                serde_json::json!({"nginx": {"resources": {"limits": {"memory": "12 parsecs"}}}}),
                "spec.nginx.resources.limits.memory",
            ),
            (
                serde_json::json!({"redis": {"storage": {"size": "a lot"}}}),
                "spec.redis.storage.size",
            ),
            (
                serde_json::json!({"api": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}}),
                "must not exceed spec.api.resources.limits.cpu",
            ),
            (
                serde_json::json!({"ui": {"podOverrides": {"spec": {"containers": [{"name": "ui", "resources": {"limits": {"cpu": "-1"}}}]}}}}),
                "spec.ui.podOverrides.spec.containers[0].resources.limits.cpu \"-1\" must not be negative",
            ),
        ] {
            let err = check_spec(&bad).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }
}
