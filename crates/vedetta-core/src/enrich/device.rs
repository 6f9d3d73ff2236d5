//! Device class, operating system and browser: the `device` dimension and its details.
//!
//! The class comes from the `device` field when the client sends one (it knows better than a
//! user-agent parser), else from the user agent. Parsing is delegated to `woothee`, a small,
//! well-kept parser with a fixed dataset, and then corrected where it is wrong for our
//! purpose: it files tablets under "smartphone", while a conversion monitor must tell them
//! apart (tablets convert like desktops, phones do not). The rules it misses are the ones
//! `docs/semantics.md` names: an iPad, and an Android device whose user agent lacks "Mobile",
//! are tablets; so are Kindles and anything that says "Tablet".
//!
//! Parsing costs about a microsecond; [`UserAgentClassifier`] remembers the answers per
//! user-agent string in a bounded memo, because real traffic repeats a few hundred strings.

use super::cache::GenerationalCache;
use crate::pipeline::hash::sampled;

/// The `device` dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DeviceClass {
    Mobile,
    Tablet,
    Desktop,
    /// A `device` field naming something that is none of the above (`tv`, `console`, `kiosk`).
    Other,
    /// No `device` field and no user agent, or one that names no device a person browses
    /// with (a crawler, an HTTP library, a TV or console, text no parser understands).
    Unknown,
}

impl DeviceClass {
    /// The value of the dimension.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceClass::Mobile => "mobile",
            DeviceClass::Tablet => "tablet",
            DeviceClass::Desktop => "desktop",
            DeviceClass::Other => "other",
            DeviceClass::Unknown => "unknown",
        }
    }

    /// The class a `device` field names, in any case: `smartphone`, `phone`, `mobile` →
    /// mobile; `tablet` → tablet; `pc`, `computer`, `desktop` → desktop; `unknown` → unknown;
    /// anything else → other (a custom class is counted, but cannot grow the dimension).
    pub fn from_field(device: &str) -> DeviceClass {
        const NAMES: &[(&str, DeviceClass)] = &[
            ("mobile", DeviceClass::Mobile),
            ("smartphone", DeviceClass::Mobile),
            ("phone", DeviceClass::Mobile),
            ("tablet", DeviceClass::Tablet),
            ("desktop", DeviceClass::Desktop),
            ("pc", DeviceClass::Desktop),
            ("computer", DeviceClass::Desktop),
            ("unknown", DeviceClass::Unknown),
        ];
        let device = device.trim();
        NAMES
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(device))
            .map_or(DeviceClass::Other, |&(_, class)| class)
    }
}

/// What a user agent says about the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UserAgentFacts {
    pub device: DeviceClass,
    /// Operating system family: `iOS`, `Android`, `Windows`, `macOS`, `Linux`, `ChromeOS`,
    /// ..., `other` for one the parser names but we do not group, `unknown` when none.
    pub os: &'static str,
    /// Browser or in-app browser: `Chrome`, `Safari`, `Firefox`, `Edge`, `Samsung Internet`,
    /// `Instagram`, `Facebook`, ..., `other`, or `unknown`.
    pub browser: &'static str,
}

impl UserAgentFacts {
    /// No user agent, or nothing recognizable in it.
    pub const UNKNOWN: UserAgentFacts = UserAgentFacts {
        device: DeviceClass::Unknown,
        os: "unknown",
        browser: "unknown",
    };

    /// Parses a user agent (uncached; see [`UserAgentClassifier`] for the memoized form).
    pub fn parse(user_agent: &str) -> UserAgentFacts {
        let user_agent = user_agent.trim();
        if user_agent.is_empty() || is_automation(user_agent) {
            return UserAgentFacts::UNKNOWN;
        }
        let Some(parsed) = woothee::parser::Parser::new().parse(user_agent) else {
            return UserAgentFacts::UNKNOWN;
        };
        let device = match parsed.category {
            "pc" if is_kindle(user_agent) => DeviceClass::Tablet,
            "pc" => DeviceClass::Desktop,
            "smartphone" | "mobilephone" if is_tv(user_agent) => DeviceClass::Unknown,
            "smartphone" | "mobilephone" if is_tablet(user_agent) => DeviceClass::Tablet,
            "smartphone" | "mobilephone" => DeviceClass::Mobile,
            // "crawler", "misc" (libraries, feed readers), "appliance" (consoles, TVs): no
            // person browsing a shop on a phone, tablet or computer.
            _ => DeviceClass::Unknown,
        };
        if device == DeviceClass::Unknown {
            return UserAgentFacts::UNKNOWN;
        }
        UserAgentFacts {
            device,
            os: os_family(parsed.os),
            browser: in_app_browser(user_agent).unwrap_or_else(|| browser_name(parsed.name)),
        }
    }
}

/// Headless browsers and bots that woothee takes for the browser they imitate: Google's
/// smartphone crawler is a complete Android Chrome string plus "(compatible; Googlebot/2.1)".
fn is_automation(user_agent: &str) -> bool {
    const HEADLESS: &[&str] = &["HeadlessChrome", "Lighthouse", "PhantomJS"];
    HEADLESS.iter().any(|marker| user_agent.contains(marker))
        || (user_agent.contains("compatible;") && contains_ignore_ascii_case(user_agent, "bot/"))
        || contains_ignore_ascii_case(user_agent, "crawler")
        || contains_ignore_ascii_case(user_agent, "spider")
}

fn is_tablet(user_agent: &str) -> bool {
    if user_agent.contains("iPad")
        || user_agent.contains("Tablet")
        || user_agent.contains("PlayBook")
    {
        return true;
    }
    if is_kindle(user_agent) {
        return true;
    }
    // Android phones say "Mobile" (Opera: "Mobi"); Android tablets do not. Opera Mini says
    // neither but runs on phones.
    user_agent.contains("Android")
        && !user_agent.contains("Mobi")
        && !user_agent.contains("Opera Mini")
}

/// Kindle readers and Fire tablets: "Kindle", the Silk browser, or a Fire model (`KFTT`).
fn is_kindle(user_agent: &str) -> bool {
    user_agent.contains("Kindle")
        || user_agent.contains("Silk/")
        || user_agent.match_indices("KF").any(|(at, _)| {
            let before = user_agent[..at].chars().next_back();
            let model = &user_agent.as_bytes()[at + 2..];
            matches!(before, Some(' ' | ';' | '('))
                && model.len() >= 2
                && model[..2].iter().all(u8::is_ascii_uppercase)
        })
}

/// Android TVs and streaming sticks, which woothee calls smartphones.
fn is_tv(user_agent: &str) -> bool {
    const MARKERS: &[&str] = &[
        "Android TV",
        "AndroidTV",
        "GoogleTV",
        "SMART-TV",
        "SmartTV",
        "BRAVIA",
        "CrKey",
        "; AFT",
    ];
    MARKERS.iter().any(|marker| user_agent.contains(marker))
}

/// In-app browsers announce the app after the engine's tokens; the app is what a marketer
/// wants to see (an Instagram click is not a Safari visit).
fn in_app_browser(user_agent: &str) -> Option<&'static str> {
    const APPS: &[(&str, &str)] = &[
        ("Instagram ", "Instagram"),
        ("FBAN/", "Facebook"),
        ("FBAV/", "Facebook"),
        ("FB_IAB", "Facebook"),
        ("musical_ly", "TikTok"),
        ("BytedanceWebview", "TikTok"),
        ("LinkedInApp", "LinkedIn"),
        ("Pinterest/", "Pinterest"),
    ];
    APPS.iter()
        .find(|(marker, _)| user_agent.contains(marker))
        .map(|&(_, app)| app)
}

/// woothee's OS names, grouped into families (version-less: the dimension is the family).
fn os_family(os: &str) -> &'static str {
    match os {
        "iPhone" | "iPad" | "iPod" | "iOS" => "iOS",
        "Android" => "Android",
        "Windows Phone OS" | "Windows CE" => "Windows Phone",
        "Mac OSX" | "Mac OS Classic" => "macOS",
        "Linux" => "Linux",
        "ChromeOS" => "ChromeOS",
        "BSD" => "BSD",
        "BlackBerry" | "BlackBerry 10" => "BlackBerry",
        "Firefox OS" => "Firefox OS",
        "UNKNOWN" | "" => "unknown",
        windows if windows.starts_with("Windows") => "Windows",
        _ => "other",
    }
}

/// woothee's browser names, with their usual names where they differ.
fn browser_name(name: &str) -> &'static str {
    match name {
        "Chrome" => "Chrome",
        "Safari" => "Safari",
        "Firefox" => "Firefox",
        "Edge" => "Edge",
        "Opera" => "Opera",
        "SamsungBrowser" => "Samsung Internet",
        "Internet Explorer" => "Internet Explorer",
        "Vivaldi" => "Vivaldi",
        "Yandex Browser" => "Yandex Browser",
        "Google Search App" => "Google App",
        "Webview" => "WebView",
        "Sleipnir" => "Sleipnir",
        "UNKNOWN" | "" => "unknown",
        _ => "other",
    }
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// A user agent in the front, with its facts.
type FrontEntry = (Box<str>, UserAgentFacts);

/// Slots of [`UserAgentClassifier`]'s front at most (a power of two).
const MAX_FRONT_SLOTS: usize = 512;

/// Classifies user agents, remembering the answer per string.
///
/// Hashing a user agent (100–200 bytes) for the memo costs more than the rest of an event's
/// enrichment, so a small direct-mapped front answers first: a slot by a few words sampled
/// from the string (`sampled`), holding the last string that fell there, checked by
/// comparing the whole string. Clients can pick strings that share a slot, but that only
/// makes them miss the front and go to the memo (a slot holds one string: nothing to walk),
/// so the front can use a cheap unseeded sample where the memo needs its seeded hash of
/// every byte.
#[derive(Debug, Clone)]
pub struct UserAgentClassifier {
    memo: GenerationalCache<Box<str>, UserAgentFacts>,
    /// `2^front_bits` slots (none when the capacity is below 4).
    front: Box<[Option<FrontEntry>]>,
    front_bits: u32,
    /// Slots holding a string.
    front_held: usize,
}

impl UserAgentClassifier {
    /// Remembers at most `capacity` user agents (below 2: none). A quarter of the capacity at
    /// most (up to 512) goes to the front, the rest to the memo.
    pub fn new(capacity: usize) -> Self {
        let front_slots = match capacity / 4 {
            0 => 0,
            quarter => MAX_FRONT_SLOTS.min(1 << quarter.ilog2()),
        };
        Self {
            memo: GenerationalCache::new(capacity - front_slots),
            front: std::iter::repeat_with(|| None).take(front_slots).collect(),
            front_bits: front_slots.max(1).ilog2(),
            front_held: 0,
        }
    }

    /// The facts of a user agent; allocates only when a string is new to the front.
    pub fn classify(&mut self, user_agent: &str) -> UserAgentFacts {
        let slot = front_slot(user_agent, self.front_bits);
        if let Some(Some((held, facts))) = self.front.get(slot)
            && **held == *user_agent
        {
            return *facts;
        }
        let facts = match self.memo.get(user_agent) {
            Some(facts) => facts,
            None => {
                let facts = UserAgentFacts::parse(user_agent);
                self.memo.insert(user_agent.into(), facts);
                facts
            }
        };
        if let Some(front) = self.front.get_mut(slot) {
            self.front_held += usize::from(front.is_none());
            *front = Some((user_agent.into(), facts));
        }
        facts
    }

    /// Distinct user agents remembered now (the memo's; the front holds copies of at most
    /// a quarter of the capacity more, within the capacity).
    pub fn remembered(&self) -> usize {
        self.memo.len()
    }
}

/// The front slot (of `2^bits`) of a user agent: the top bits of its sample.
fn front_slot(user_agent: &str, bits: u32) -> usize {
    match bits {
        0 => 0,
        bits => (sampled(user_agent.as_bytes()) >> (64 - bits)) as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vedetta_synth::{DeviceClass as SynthDevice, user_agents};

    fn class(user_agent: &str) -> DeviceClass {
        UserAgentFacts::parse(user_agent).device
    }

    #[test]
    fn every_catalog_user_agent_gets_its_device_os_and_browser() {
        for spec in user_agents() {
            let facts = UserAgentFacts::parse(spec.user_agent);
            let expected = match spec.device {
                SynthDevice::Mobile => DeviceClass::Mobile,
                SynthDevice::Tablet => DeviceClass::Tablet,
                SynthDevice::Desktop => DeviceClass::Desktop,
            };
            assert_eq!(facts.device, expected, "{}", spec.user_agent);
            assert_eq!(facts.os, spec.os, "{}", spec.user_agent);
            assert_eq!(facts.browser, spec.browser, "{}", spec.user_agent);
        }
    }

    #[test]
    fn tablets_that_woothee_calls_smartphones() {
        let tablets = [
            // iPad, classic form
            "Mozilla/5.0 (iPad; CPU OS 16_7_7 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1",
            // Android tablet: no "Mobile"
            "Mozilla/5.0 (Linux; Android 11; SM-T870) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.6099.144 Safari/537.36",
            "Mozilla/5.0 (Linux; Android 7.1.1; Nexus 9 Build/N4F26M) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/67.0.3396.87 Safari/537.36",
            // Firefox for Android on a tablet
            "Mozilla/5.0 (Android 14; Tablet; rv:125.0) Gecko/125.0 Firefox/125.0",
            // Kindle Fire with Silk
            "Mozilla/5.0 (Linux; U; Android 4.0.3; en-us; KFTT Build/IML74K) AppleWebKit/535.19 (KHTML, like Gecko) Silk/3.68 Safari/535.19 Silk-Accelerated=true",
            "Mozilla/5.0 (Linux; Android 9; KFMAWI) AppleWebKit/537.36 (KHTML, like Gecko) Silk/124.2.1 like Chrome/124.0.6367.179 Safari/537.36",
        ];
        for user_agent in tablets {
            assert_eq!(class(user_agent), DeviceClass::Tablet, "{user_agent}");
        }
        let phones = [
            "Mozilla/5.0 (Linux; Android 14; SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/123.0.6312.118 Mobile Safari/537.36",
            "Mozilla/5.0 (Android 14; Mobile; rv:125.0) Gecko/125.0 Firefox/125.0",
            "Opera/9.80 (Android; Opera Mini/36.2.2254/119.132; U; id) Presto/2.12.423 Version/12.16",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) FxiOS/125.0 Mobile/15E148 Safari/605.1.15",
        ];
        for user_agent in phones {
            assert_eq!(class(user_agent), DeviceClass::Mobile, "{user_agent}");
        }
    }

    #[test]
    fn bots_libraries_tvs_and_noise_are_unknown() {
        let unknown = [
            "",
            "   ",
            "-",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.6367.201 Mobile Safari/537.36 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/124.0.0.0 Safari/537.36",
            "curl/8.5.0",
            "python-requests/2.31.0",
            "Mozilla/5.0 (Linux; Android 9; BRAVIA 4K UR2 Build/PTT1.190515.001.S52) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/117.0.0.0 Safari/537.36",
            "Mozilla/5.0 (PlayStation 4 11.00) AppleWebKit/605.1.15 (KHTML, like Gecko)",
            "lorem ipsum",
        ];
        for user_agent in unknown {
            assert_eq!(
                UserAgentFacts::parse(user_agent),
                UserAgentFacts::UNKNOWN,
                "{user_agent}"
            );
        }
    }

    #[test]
    fn desktops_and_their_families() {
        let chromebook = UserAgentFacts::parse(
            "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36",
        );
        assert_eq!(
            chromebook,
            UserAgentFacts {
                device: DeviceClass::Desktop,
                os: "ChromeOS",
                browser: "Chrome"
            }
        );
        let old_windows = UserAgentFacts::parse(
            "Mozilla/5.0 (Windows NT 6.1; WOW64; Trident/7.0; rv:11.0) like Gecko",
        );
        assert_eq!(old_windows.device, DeviceClass::Desktop);
        assert_eq!(old_windows.os, "Windows");
        assert_eq!(old_windows.browser, "Internet Explorer");
    }

    #[test]
    fn device_field_overrides_in_any_case() {
        let cases = [
            ("smartphone", DeviceClass::Mobile),
            ("Phone", DeviceClass::Mobile),
            ("MOBILE", DeviceClass::Mobile),
            (" tablet ", DeviceClass::Tablet),
            ("PC", DeviceClass::Desktop),
            ("computer", DeviceClass::Desktop),
            ("Desktop", DeviceClass::Desktop),
            ("smart_tv", DeviceClass::Other),
            ("console", DeviceClass::Other),
            ("Unknown", DeviceClass::Unknown),
        ];
        for (field, expected) in cases {
            assert_eq!(DeviceClass::from_field(field), expected, "{field}");
        }
        let names: Vec<_> = [
            DeviceClass::Mobile,
            DeviceClass::Tablet,
            DeviceClass::Desktop,
            DeviceClass::Other,
            DeviceClass::Unknown,
        ]
        .map(DeviceClass::as_str)
        .into();
        assert_eq!(names, ["mobile", "tablet", "desktop", "other", "unknown"]);
    }

    #[test]
    fn strings_that_share_a_front_slot_get_their_own_answers() {
        // Capacity 4: one front slot, so every string shares it; 0 and 1: no front, no memo.
        for capacity in [4, 0, 1, 10_000] {
            let mut classifier = UserAgentClassifier::new(capacity);
            for round in 0..3 {
                for spec in user_agents() {
                    assert_eq!(
                        classifier.classify(spec.user_agent),
                        UserAgentFacts::parse(spec.user_agent),
                        "capacity {capacity}, round {round}: {}",
                        spec.user_agent
                    );
                    assert!(classifier.remembered() + classifier.front_held <= capacity);
                }
                for short in ["", "a", "curl/8", "Mozilla"] {
                    assert_eq!(classifier.classify(short), UserAgentFacts::parse(short));
                }
            }
        }
        let mut classifier = UserAgentClassifier::new(10_000);
        classifier.classify(user_agents()[0].user_agent);
        assert_eq!(classifier.front_held, 1, "the front holds what it answered");
    }

    #[test]
    fn the_classifier_remembers_at_most_its_capacity() {
        let mut classifier = UserAgentClassifier::new(100);
        let base = user_agents()[0].user_agent;
        for n in 0..1_000 {
            let user_agent = format!("{base} build/{n}");
            assert_eq!(classifier.classify(&user_agent).device, DeviceClass::Mobile);
            assert!(
                classifier.remembered() <= 100,
                "{}",
                classifier.remembered()
            );
        }
        // A hit returns the same answer as a parse.
        for spec in user_agents() {
            let first = classifier.classify(spec.user_agent);
            assert_eq!(classifier.classify(spec.user_agent), first);
            assert_eq!(first, UserAgentFacts::parse(spec.user_agent));
        }
    }
}
