//! The fixed material alerts are drawn from: detection templates (titles, descriptions, MITRE
//! techniques, the first evidence kind), severities, states, classifications, comments, user
//! names, binaries, parent processes and URLs, as they appear in `docs/mde-api.md`.

pub(super) struct Template {
    pub(super) source: &'static str,
    pub(super) detector: &'static str,
    pub(super) category: &'static str,
    pub(super) title: &'static str,
    pub(super) description: &'static str,
    pub(super) techniques: &'static [&'static str],
    pub(super) family: Option<&'static str>,
    pub(super) threat: Option<&'static str>,
    pub(super) first_evidence: Kind,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Kind {
    User,
    Process,
    File,
    Ip,
    Url,
}

pub(super) const TEMPLATES: &[Template] = &[
    Template {
        source: "WindowsDefenderAtp",
        detector: "17e10bbc-3a68-474a-8aad-faef14d43952",
        category: "Execution",
        title: "Low-reputation arbitrary code executed by signed executable",
        description: "Binaries signed by Microsoft can be used to run low-reputation arbitrary code. This technique hides the execution of malicious code within a trusted process. As a result, the trusted process might exhibit suspicious behaviors, such as opening a listening port or connecting to a command-and-control (C&C) server.",
        techniques: &["T1064", "T1085", "T1220"],
        family: None,
        threat: None,
        first_evidence: Kind::Process,
    },
    Template {
        source: "WindowsDefenderAtp",
        detector: "7f1c3609-a3ff-40e2-995b-c01770161d68",
        category: "SuspiciousActivity",
        title: "Suspicious PowerShell command line",
        description: "A suspicious PowerShell activity was observed on the machine.\nThis behavior may indicate that PowerShell was used during installation, exploration, or in some cases in lateral movement activities.",
        techniques: &["T1059.001", "T1027"],
        family: None,
        threat: None,
        first_evidence: Kind::Process,
    },
    Template {
        source: "WindowsDefenderAtp",
        detector: "2f0a0b30-8b6e-4d2c-9a44-2b6ab2a0c3f1",
        category: "CredentialAccess",
        title: "Suspicious access to LSASS service",
        description: "A process accessed the Local Security Authority Subsystem Service (LSASS), which stores credentials. Attackers read LSASS memory to harvest passwords and hashes.",
        techniques: &["T1003.001"],
        family: None,
        threat: None,
        first_evidence: Kind::Process,
    },
    Template {
        source: "WindowsDefenderAv",
        detector: "1b0d0d3e-3c62-4c3b-a1a5-6f1f1a2f7e10",
        category: "Malware",
        title: "'Mimikatz' hacktool was detected",
        description: "Readily available tools, such as hacking programs, can be used by unauthorized individuals to spy on users. When used by attackers, these tools are often installed without authorization and used to compromise targeted machines.",
        techniques: &[],
        family: Some("Mimikatz"),
        threat: Some("HackTool:Win32/Mimikatz!pz"),
        first_evidence: Kind::File,
    },
    Template {
        source: "WindowsDefenderAv",
        detector: "c4a8e0a2-5f0e-4b8e-9d7a-0e3b8f6a1d22",
        category: "Malware",
        title: "'Emotet' malware was prevented",
        description: "Malware and unwanted software are undesirable applications that perform annoying, disruptive, or harmful actions on affected machines. This detection was prevented from running.",
        techniques: &[],
        family: Some("Emotet"),
        threat: Some("Trojan:Win32/Emotet.ARJ!MTB"),
        first_evidence: Kind::File,
    },
    Template {
        source: "WindowsDefenderAv",
        detector: "0d5a3b6c-7e2f-4c1d-8b9a-3f4e5d6c7b8a",
        category: "Malware",
        title: "An active 'Wacatac' malware was blocked",
        description: "An active malware process was detected while executing, and Microsoft Defender Antivirus blocked it.",
        techniques: &[],
        family: Some("Wacatac"),
        threat: Some("Trojan:Win32/Wacatac.B!ml"),
        first_evidence: Kind::File,
    },
    Template {
        source: "WindowsDefenderAtp",
        detector: "a5e1d3c2-9b8f-4e7d-a6c5-b4a3f2e1d0c9",
        category: "DefenseEvasion",
        title: "Suspicious process injection observed",
        description: "A process abnormally injected code into another process. Attackers inject code to hide in legitimate processes.",
        techniques: &["T1055", "T1055.012"],
        family: None,
        threat: None,
        first_evidence: Kind::Process,
    },
    Template {
        source: "WindowsDefenderAtp",
        detector: "e3b0c442-98fc-4c14-9afb-f4c8996fb924",
        category: "Ransomware",
        title: "Ransomware behavior detected in the file system",
        description: "A process modified many files with a pattern typical of ransomware encryption.",
        techniques: &["T1486"],
        family: None,
        threat: None,
        first_evidence: Kind::Process,
    },
    Template {
        source: "WindowsDefenderAtp",
        detector: "5d8f2a7c-1e4b-4f3a-9c6d-8e2b1a0f9d7e",
        category: "LateralMovement",
        title: "Suspicious remote WMI execution",
        description: "A remote process was launched through Windows Management Instrumentation (WMI).",
        techniques: &["T1047", "T1021.006"],
        family: None,
        threat: None,
        first_evidence: Kind::Process,
    },
    Template {
        source: "CustomerTI",
        detector: "9c2d4e6f-8a1b-4c3d-b5e7-f9a1c3e5d7b9",
        category: "SuspiciousActivity",
        title: "Connection to a custom network indicator",
        description: "An endpoint has connected to a URL or domain in your list of custom indicators: \"c2.bad-example.net\".",
        techniques: &["T1071.001"],
        family: None,
        threat: None,
        first_evidence: Kind::Url,
    },
    Template {
        source: "WindowsDefenderAtp",
        detector: "3e7a9c1b-5d2f-4a8e-b6c4-d2f0e8a6c4b2",
        category: "Persistence",
        title: "Suspicious scheduled task \u{201c}OneDrive Updater\u{201d} registered",
        description: "A scheduled task was created with a name that imitates a legitimate one \u{2014} a common persistence technique.",
        techniques: &["T1053.005"],
        family: None,
        threat: None,
        first_evidence: Kind::Process,
    },
];

pub(super) const SEVERITIES: &[&str] = &["UnSpecified", "Informational", "Low", "Medium", "High"];

pub(super) const OPEN_STATES: &[&str] = &[
    "Queued",
    "Running",
    "PendingApproval",
    "PendingResource",
    "PartiallyInvestigated",
    "UnsupportedOs",
    "UnsupportedAlertType",
    "Unknown",
    "Failed",
    "InnerFailure",
    "Terminated",
    "TerminatedByUser",
];

pub(super) const CLOSED_STATES: &[&str] = &[
    "SuccessfullyRemediated",
    "Benign",
    "TerminatedBySystem",
    "PartiallyRemediated",
    "PreexistingAlert",
    "UnsupportedAlertType",
    "SuppressedAlert",
];

pub(super) const CLASSIFICATIONS: &[(&str, &[&str])] = &[
    (
        "TruePositive",
        &[
            "MultiStagedAttack",
            "MaliciousUserActivity",
            "CompromisedUser",
            "Malware",
            "Phishing",
            "UnwantedSoftware",
            "Other",
        ],
    ),
    (
        "InformationalExpectedActivity",
        &[
            "SecurityTesting",
            "LineOfBusinessApplication",
            "ConfirmedUserActivity",
            "Other",
        ],
    ),
    ("FalsePositive", &["Clean", "InsufficientData", "Other"]),
];

pub(super) const COMMENTS: &[&str] = &[
    "test comment for docs",
    "Looking into it.",
    "User confirmed they ran this; closing.",
    "Isolated the device, waiting for the owner.",
    "Escalated to tier 2 \u{2192} see ticket INC-4711",
    "Pen test by \"Red Team\" (approved), path C:\\Tools\\",
];

pub(super) const USER_NAMES: &[&str] = &[
    "alice.wong",
    "bob.smith",
    "j\u{fc}rgen.m\u{fc}ller",
    "chen.wei",
    "fatima.al-sayed",
    "sean.o'brien",
    "svc_backup",
    "admin.local",
];

pub(super) const BINARIES: &[(&str, &str, &str)] = &[
    (
        "powershell.exe",
        "C:\\Windows\\System32\\WindowsPowerShell\\v1.0",
        "powershell.exe -NoP -W Hidden -Enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoAZQBjAHQAKQA=",
    ),
    (
        "rundll32.exe",
        "C:\\Windows\\SysWOW64",
        "rundll32.exe  c:\\temp\\suspicious.dll,RepeatAfterMe",
    ),
    (
        "wmic.exe",
        "C:\\Windows\\System32\\wbem",
        "wmic /node:\"10.0.0.12\" process call create \"cmd.exe /c whoami\"",
    ),
    (
        "mimikatz.exe",
        "C:\\Users\\Public\\Downloads",
        "mimikatz.exe \"privilege::debug\" \"sekurlsa::logonpasswords\" exit",
    ),
    (
        "invoice_2024.docm",
        "C:\\Users\\Public\\AppData\\Local\\Temp",
        "\"C:\\Program Files\\Microsoft Office\\root\\Office16\\WINWORD.EXE\" /n \"invoice_2024.docm\"",
    ),
    (
        "schtasks.exe",
        "C:\\Windows\\System32",
        "schtasks /create /tn \"OneDrive Updater\" /tr C:\\ProgramData\\upd.exe /sc onlogon",
    ),
];

pub(super) const PARENTS: &[(&str, &str)] = &[
    ("explorer.exe", "C:\\Windows"),
    ("cmd.exe", "C:\\Windows\\System32"),
    ("WmiPrvSE.exe", "C:\\Windows\\System32\\wbem"),
    (
        "WINWORD.EXE",
        "C:\\Program Files\\Microsoft Office\\root\\Office16",
    ),
];

pub(super) const URLS: &[&str] = &[
    "http://c2.bad-example.net/gate.php?id=42&x=%2F",
    "https://login.micros0ft-support.example/oauth",
    "c2.bad-example.net",
];
