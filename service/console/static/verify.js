// Entente console: verify one audit entry in the browser, trusting nothing the node says.
//
// From the entry's fields (embedded in the page as JSON) this module
//   1. parses the checkpoint (C2SP signed-note + tlog-checkpoint), checks that its origin is the
//      log key's name and that its Ed25519 signature verifies under the log key in the box
//      (C2SP key ID = SHA-256(name || 0x0A || 0x01 || key)[:4]);
//   2. checks each partner witness's cosignature (C2SP tlog-cosignature v1, type 0x04: Ed25519
//      over "cosignature/v1\ntime <t>\n" + checkpoint text);
//   3. checks that the page shows exactly the fields it verifies, re-derives the canonical leaf
//      (encoding v1: sorted compact JSON, UTF-8) and its leaf hash SHA-256(0x00 || leaf);
//   4. follows the inclusion proof to a root hash (RFC 9162, section 2.1.3.2) and requires it
//      to be the checkpoint's root.
// Hashes and signatures use WebCrypto only. Nothing is fetched; results are written with
// textContent only.

const enc = new TextEncoder();
const SIG_ED25519 = 0x01;
const SIG_COSIGNATURE_V1 = 0x04;

export class VerifyError extends Error {}          // the evidence is wrong: FAILED
export class UnavailableError extends Error {}     // verification could not run here

export function bytesOfBase64(text, what) {
  let binary;
  try {
    binary = atob(text);
  } catch {
    throw new VerifyError(`${what} is not valid base64`);
  }
  const out = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  if (base64OfBytes(out) !== text) throw new VerifyError(`${what} is not canonical base64`);
  return out;
}

export function base64OfBytes(bytes) {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function equal(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
}

export const leafHash = (leaf) => sha256(concat(new Uint8Array([0x00]), leaf));   // RFC 9162 2.1.1
const nodeHash = (l, r) => sha256(concat(new Uint8Array([0x01]), l, r));

// --- the entry encoding (docs/audit-log.md, "Entry encoding"; service/audit/entries.py, encode_leaf) 

function str(value, name) {
  if (typeof value !== "string") throw new VerifyError(`the field ${name} is not a string`);
  // JSON.stringify escapes exactly ", \ and U+0000..U+001F (lowercase \u00xx), like the node.
  return JSON.stringify(value);
}

function opt(value, name) {
  return value === null ? "null" : str(value, name);
}

function digits(value, name) {
  if (typeof value !== "string" || !/^(0|[1-9][0-9]{0,18})$/.test(value)) {
    throw new VerifyError(`the field ${name} is not a whole number`);
  }
  return value;
}

export function encodeLeaf(e) {
  if (e.v !== 1) throw new VerifyError(`unknown entry encoding version ${String(e.v)}`);
  const text =
    `{"actor":${str(e.actor, "actor")},"artifact_id":${opt(e.artifact_id, "artifact_id")},` +
    `"clause":${opt(e.clause, "clause")},"created_at":${str(e.created_at, "created_at")},` +
    `"decision":${opt(e.decision, "decision")},"detail":${str(e.detail, "detail")},` +
    `"digest":${opt(e.digest, "digest")},"id":${digits(e.id, "id")},"kind":${str(e.kind, "kind")},` +
    `"partner":${opt(e.partner, "partner")},"rule":${opt(e.rule, "rule")},` +
    `"seq":${digits(e.seq, "seq")},"v":1}`;
  return enc.encode(text);
}

// --- RFC 9162 2.1.3.2: verify an inclusion proof ------------------------------------------------

export async function rootFromInclusionProof(index, size, leaf, proof) {
  if (leaf.length !== 32) throw new VerifyError("the leaf hash is not 32 bytes");
  if (index < 0n) throw new VerifyError("a log index is not negative");
  if (index >= size) throw new VerifyError(`entry ${index} is not in a tree of ${size} entries`);
  let fn = index;
  let sn = size - 1n;
  let r = leaf;
  for (const p of proof) {
    if (p.length !== 32) throw new VerifyError("a proof hash is not 32 bytes");
    if (sn === 0n) throw new VerifyError("the inclusion proof is longer than this tree allows");
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      while ((fn & 1n) === 0n && fn !== 0n) {
        fn >>= 1n;
        sn >>= 1n;
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n;
    sn >>= 1n;
  }
  if (sn !== 0n) throw new VerifyError("the inclusion proof is shorter than this tree needs");
  return r;
}

// True when the proof shows `leaf` at `index` in the tree of `size` leaves with `root`.
export async function verifyInclusion(index, size, leaf, proof, root) {
  if (root.length !== 32) throw new VerifyError("the root hash is not 32 bytes");
  return equal(await rootFromInclusionProof(index, size, leaf, proof), root);
}

// --- C2SP signed notes, checkpoints, keys -----------------------------------------------------

export function parseNote(note) {
  if (!note.endsWith("\n")) throw new VerifyError("the checkpoint note does not end with a newline");
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw new VerifyError("the checkpoint note has no signature block");
  const text = note.slice(0, split + 1);
  const lines = note.slice(split + 2, -1).split("\n");
  const signatures = lines.map((line) => {
    if (!line.startsWith("\u2014 ")) throw new VerifyError("a signature line does not start with an em dash");
    const rest = line.slice(2);
    const space = rest.indexOf(" ");
    if (space <= 0) throw new VerifyError("a signature line is not '— <name> <signature>'");
    const blob = bytesOfBase64(rest.slice(space + 1), "a signature");
    if (blob.length < 5) throw new VerifyError("a signature is too short");
    return { name: rest.slice(0, space), keyId: blob.slice(0, 4), signature: blob.slice(4) };
  });
  return { text, signatures };
}

function parseCheckpoint(text) {
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw new VerifyError("the checkpoint has no origin, size and root hash");
  const [origin, size, root] = lines;
  if (!/^(0|[1-9][0-9]{0,18})$/.test(size)) throw new VerifyError("the checkpoint size is not a number");
  const rootHash = bytesOfBase64(root, "the checkpoint root hash");
  if (rootHash.length !== 32) throw new VerifyError("the checkpoint root hash is not 32 bytes");
  return { origin, size: BigInt(size), root: rootHash };
}

async function keyIdOf(name, type, key) {
  return (await sha256(concat(enc.encode(name), new Uint8Array([0x0a, type]), key))).slice(0, 4);
}

// A verifier key "name+hexid+base64(type || key)"; the key ID must match the name and key.
export async function parseVerifierKey(vkey, wantType, what) {
  const first = vkey.indexOf("+");
  const second = vkey.indexOf("+", first + 1);
  if (first <= 0 || second < 0) throw new VerifyError(`${what} is not name+keyid+key`);
  const name = vkey.slice(0, first);
  const hexId = vkey.slice(first + 1, second);
  if (!/^[0-9a-f]{8}$/.test(hexId)) throw new VerifyError(`${what}: the key ID is not 8 hex digits`);
  const raw = bytesOfBase64(vkey.slice(second + 1), what);
  if (raw.length !== 33 || raw[0] !== wantType) {
    throw new VerifyError(`${what} is not an Ed25519 key of type 0x0${wantType}`);
  }
  const key = raw.slice(1);
  const keyId = await keyIdOf(name, wantType, key);
  if (!equal(keyId, Uint8Array.from(hexId.match(/../g), (h) => parseInt(h, 16)))) {
    throw new VerifyError(`${what}: the key ID does not match its name and key`);
  }
  return { name, keyId, key };
}

export async function ed25519Verify(key, signature, message) {
  let cryptoKey;
  try {
    cryptoKey = await crypto.subtle.importKey("raw", key, { name: "Ed25519" }, false, ["verify"]);
  } catch (err) {
    if (err && err.name === "NotSupportedError") {
      throw new UnavailableError("this browser's WebCrypto does not support Ed25519");
    }
    throw new VerifyError("the key is not a valid Ed25519 public key");
  }
  return crypto.subtle.verify({ name: "Ed25519" }, cryptoKey, signature, message);
}

// --- the page -------------------------------------------------------------------------------

function showFieldsMatch(entry) {
  const norm = (s) => s.replace(/\r\n?/g, "\n");
  for (const el of document.querySelectorAll("[data-field]")) {
    const name = el.dataset.field;
    if (!(name in entry)) return `the page shows a field ${name} that the entry does not have`;
    const value = entry[name];
    const shownNull = el.dataset.null === "true";
    if (value === null ? !shownNull : shownNull || norm(el.textContent) !== norm(String(value))) {
      return `the page shows ${name} differently from the fields that were verified`;
    }
  }
  return null;
}

async function verify(data, logKeyText) {
  const steps = [];
  const step = (ok, label, detail) => steps.push({ ok, label, detail });
  const entry = data.entry;
  const cells = new Map(
    [...document.querySelectorAll("[data-cosigner]")].map((el) => [el.dataset.cosigner, el]),
  );
  for (const cell of cells.values()) cell.textContent = "not checked";
  let stage = "Log key";
  try {
    const logKey = await parseVerifierKey(logKeyText.trim(), SIG_ED25519, "the log key");
    const hexId = [...logKey.keyId].map((b) => b.toString(16).padStart(2, "0")).join("");
    step(true, stage, `${logKey.name}, key ID ${hexId}`);

    stage = "Checkpoint signature";
    const note = parseNote(data.checkpoint);
    const checkpoint = parseCheckpoint(note.text);
    if (checkpoint.origin !== logKey.name) {
      throw new VerifyError(`the checkpoint's origin (${checkpoint.origin}) is not the log key's name`);
    }
    const logSig = note.signatures.find((s) => s.name === logKey.name && equal(s.keyId, logKey.keyId));
    if (!logSig) throw new VerifyError("the checkpoint carries no signature by this log key");
    if (logSig.signature.length !== 64) throw new VerifyError("the log signature is not 64 bytes");
    if (!(await ed25519Verify(logKey.key, logSig.signature, enc.encode(note.text)))) {
      throw new VerifyError("the checkpoint's Ed25519 signature does not verify under the log key");
    }
    step(true, stage, `Ed25519 signature by ${logKey.name} on the checkpoint of size ${checkpoint.size}`);

    const cosigned = [];
    for (const w of data.witness_keys) {
      stage = `Cosignature by ${w.partner}`;
      const cell = cells.get(w.partner);
      const witness = await parseVerifierKey(w.vkey, SIG_COSIGNATURE_V1, `the witness key of ${w.partner}`);
      const sig = note.signatures.find((s) => s.name === witness.name && equal(s.keyId, witness.keyId));
      if (!sig) {
        if (cell) cell.textContent = "no cosignature on this checkpoint";
        continue;
      }
      if (sig.signature.length !== 72) throw new VerifyError(`the cosignature by ${w.partner} is not 72 bytes`);
      const time = new DataView(sig.signature.buffer, sig.signature.byteOffset, 8).getBigUint64(0);
      const message = concat(enc.encode(`cosignature/v1\ntime ${time}\n`), enc.encode(note.text));
      if (!(await ed25519Verify(witness.key, sig.signature.slice(8), message))) {
        if (cell) cell.textContent = "FAILED: the cosignature does not verify";
        throw new VerifyError(`the cosignature by ${w.partner} does not verify`);
      }
      const when = new Date(Number(time) * 1000).toISOString().replace(".000Z", "Z");
      if (cell) cell.textContent = `verified, cosigned ${when}`;
      cosigned.push(w.partner);
      step(true, stage, `tlog-cosignature v1, made ${when}`);
    }
    const known = new Set([logKey.name, ...data.witness_keys.map((w) => w.vkey.split("+")[0])]);
    const unknown = note.signatures.filter((s) => !known.has(s.name)).map((s) => s.name);
    if (unknown.length) step(true, "Other signatures", `ignored (unknown keys): ${unknown.join(", ")}`);

    stage = "Fields shown";
    const mismatch = showFieldsMatch(entry);
    if (mismatch) throw new VerifyError(mismatch);
    step(true, stage, "the page shows exactly the fields that are verified");

    stage = "Leaf hash";
    const leaf = await leafHash(encodeLeaf(entry));
    step(true, stage, `recomputed from the fields: ${base64OfBytes(leaf)}`);

    stage = "Inclusion proof";
    const proof = data.proof.map((h, i) => bytesOfBase64(h, `proof hash ${i + 1}`));
    const index = BigInt(digits(entry.seq, "seq"));
    if (!(await verifyInclusion(index, checkpoint.size, leaf, proof, checkpoint.root))) {
      throw new VerifyError(
        "the inclusion proof does not lead to the checkpoint's root hash: these fields are not what the log committed to",
      );
    }
    step(true, stage, `${proof.length} hashes lead from entry ${entry.seq} to the signed root ${base64OfBytes(checkpoint.root)}`);

    const by = cosigned.length ? `, cosigned by ${cosigned.join(", ")}` : ", with no partner cosignature";
    return {
      state: "verified",
      summary: `Verified in your browser: entry ${entry.seq} is in the log of ${checkpoint.size} entries, whose checkpoint is signed by the log key${by}.`,
      steps,
    };
  } catch (err) {
    if (err instanceof UnavailableError) {
      return { state: "unavailable", summary: `Could not verify here: ${err.message}.`, steps };
    }
    const reason = err instanceof VerifyError ? err.message : `unexpected error (${err})`;
    step(false, stage, reason);
    return { state: "failed", summary: `FAILED: ${reason}.`, steps };
  }
}

function show(result) {
  const box = document.getElementById("verify-result");
  box.dataset.state = result.state;
  box.className = `status ${result.state === "verified" ? "status-pass" : result.state === "failed" ? "status-fail" : "status-warn"}`;
  box.textContent = result.summary;
  const list = document.getElementById("verify-steps");
  list.replaceChildren(
    ...result.steps.map((s) => {
      const li = document.createElement("li");
      const word = document.createElement("strong");
      word.className = `status-word ${s.ok ? "pass" : "fail"}`;
      word.textContent = s.ok ? "passed" : "FAILED";
      li.append(word, ` ${s.label}: `, s.detail);
      return li;
    }),
  );
}

async function run() {
  const live = document.getElementById("verify-live");
  const source = document.getElementById("verify-data");
  if (!live || !source) return;
  document.getElementById("verify-nojs").hidden = true;
  live.hidden = false;
  if (!window.isSecureContext || !crypto.subtle) {
    show({ state: "unavailable", summary: "Could not verify here: WebCrypto needs a secure context (HTTPS, or localhost).", steps: [] });
    return;
  }
  let data;
  try {
    data = JSON.parse(source.textContent);
  } catch {
    show({ state: "failed", summary: "FAILED: the page's verification data is not valid JSON.", steps: [] });
    return;
  }
  const input = document.getElementById("log-key");
  const form = document.getElementById("verify-form");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    show({ state: "running", summary: "Verifying…", steps: [] });
    show(await verify(data, input.value));
  });
  show(await verify(data, input.value));
}

run();
