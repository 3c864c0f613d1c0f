//! HTML by hand: escaping, the page frame with its stylesheet, and small pieces (progress
//! bars, counts) the pages share. No template engine, no JavaScript build step.

use axum::response::Html;

/// Text made safe for HTML content and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Seconds between reloads while work is going on.
pub const REFRESH_SECS: u32 = 5;

const STYLE: &str = "
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1d2330;background:#f5f6f8}
header{background:#1d2b4f;color:#fff;padding:10px 24px;display:flex;gap:24px;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}
header .live{font-size:12px;color:#9fe3b0}
main{padding:16px 24px;max-width:1200px}
h1{font-size:20px;margin:8px 0 12px}h2{font-size:16px;margin:24px 0 8px}
section{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:12px 16px;margin:12px 0}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceff3;vertical-align:top}
th{font-weight:600;color:#556;font-size:12px;text-transform:uppercase;letter-spacing:.03em}
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}
.bar{background:#e6e9ef;border-radius:3px;height:10px;width:180px;display:flex;overflow:hidden}
.bar span{display:block;height:100%}
.ok{background:#2e9e5b}.bad{background:#d64545}.warn{background:#e0a100}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;background:#eef1f6;margin:0 4px 4px 0}
.pill.bad{background:#fde8e8;color:#a12121}.pill.warn{background:#fff4d6;color:#7a5800}.pill.ok{background:#e3f5ea;color:#1d6b3d}
.reason{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:13px;word-break:break-word}
.muted{color:#778}.error{color:#a12121}
.flash{background:#e3f5ea;border:1px solid #9fd4b2;padding:8px 12px;border-radius:6px}
button{font:inherit;padding:3px 10px;border-radius:4px;border:1px solid #8a94a6;background:#fff;cursor:pointer}
button.primary{background:#1d2b4f;color:#fff;border-color:#1d2b4f}
button.danger{background:#b42318;color:#fff;border-color:#b42318}
form.inline{display:inline;margin:0}
a.button{display:inline-block;padding:3px 10px;border-radius:4px;border:1px solid #8a94a6;background:#fff;color:inherit;text-decoration:none;margin-right:6px}
a.button.primary{background:#1d2b4f;color:#fff;border-color:#1d2b4f}
a.button.danger{background:#b42318;color:#fff;border-color:#b42318}
.charts{display:flex;flex-wrap:wrap;gap:12px}
.chart{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:8px}
.chart h3{font-size:13px;margin:0 0 4px}
.key{display:inline-block;width:10px;height:10px;border-radius:2px;margin:0 4px 0 10px}
footer{padding:16px 24px;color:#778;font-size:12px}
";

/// A whole page. `refresh` reloads it every few seconds (while work is going on).
pub fn layout(title: &str, refresh: bool, body: &str, footer: &str) -> Html<String> {
    let meta = if refresh {
        format!("<meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">")
    } else {
        String::new()
    };
    let live = if refresh {
        format!("<span class=live>● live: refreshing every {REFRESH_SECS}s</span>")
    } else {
        String::new()
    };
    Html(format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">{meta}\
         <title>{} · visibuild-import</title><style>{STYLE}</style></head><body>\
         <header><a href=\"/\">visibuild-import · operations</a>{live}</header>\
         <main>{body}</main><footer>{footer}</footer></body></html>",
        esc(title)
    ))
}

/// A bar of `parts` (count, css class) out of `total`.
pub fn bar(total: i64, parts: &[(i64, &str)]) -> String {
    let mut out = String::from("<div class=bar>");
    if total > 0 {
        for (n, class) in parts {
            let pct = (*n as f64 * 100.0 / total as f64).clamp(0.0, 100.0);
            out.push_str(&format!(
                "<span class={class} style=\"width:{pct:.1}%\"></span>"
            ));
        }
    }
    out.push_str("</div>");
    out
}

/// `n label` pills for the non-zero counts, coloured by `class_of(label)`.
pub fn pills<'a>(counts: impl IntoIterator<Item = (&'a str, i64)>) -> String {
    let mut out = String::new();
    for (label, n) in counts {
        let class = match label {
            "created" | "uploaded" | "completed" => "ok",
            "failed" => "bad",
            "needs_review" | "retrying" => "warn",
            _ => "",
        };
        out.push_str(&format!(
            "<span class=\"pill {class}\">{n} {}</span>",
            esc(&label.replace('_', " "))
        ));
    }
    if out.is_empty() {
        out.push_str("<span class=muted>none</span>");
    }
    out
}

/// A hidden CSRF field for a form.
pub fn csrf_field(token: &str) -> String {
    format!("<input type=hidden name=csrf value=\"{}\">", esc(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_the_manifest_cannot_open_a_tag_or_leave_an_attribute() {
        assert_eq!(
            esc(r#"<script>alert("x")</script> & 'y'"#),
            "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;"
        );
    }
}
