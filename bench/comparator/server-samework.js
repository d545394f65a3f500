'use strict';
// The same-work comparator: fastify with 2 cluster workers doing, per POST /token, the work
// zuplo-sts does on its warm path (a token never seen before, for an identity whose credentials
// are cached), so that the head-to-head compares runtimes doing the same job rather than sts
// against a server that only verifies (server-fastify.js). Per request:
//
// 1. the form body parsed as sts parses it (sts/api/token.py): ASCII, at most 64 fields, a
//    repeated known parameter refused, only encoded parts decoded; grant_type,
//    subject_token, subject_token_type checked, actor_token refused;
// 2. the token's SHA-256 looked up in a verified-token cache of 10,000 entries (LRU), as sts's
//    TokenVerifier does; on a miss (every request of the fresh-token scenario: it cycles
//    through 12,000 tokens) the RS256 signature verified with jose against the issuer's JWKS,
//    exactly as server-fastify.js does (createRemoteJWKSet + jwtVerify with issuer, audience,
//    algorithms), then the checks sts adds (sts/identity/verifier.py): 16 KiB and ASCII,
//    the forbidden headers and typ, exp and iat required, iat not in the future, exp - iat at
//    most 24 h, 60 s leeway, the five identity claims non-empty strings, environment_type one
//    of three;
// 3. the mapping selected from the mappings the bench generated (MAPPINGS_FILE, the JSON the
//    bench writes with harness.workload.write_mappings_json), indexed by account, by the rule
//    of docs/reference.md section 4: among enabled mappings of the caller's account whose
//    project is the caller's or "*", whose deployment is the caller's, a glob matching it or
//    "*", and whose environment_type is the caller's or "*", the most specific wins, compared
//    by deployment (exact > glob > "*"), then environment, then project; two equal are a tie
//    (invalid_target). scope and requested_token_type checked against the mapping;
// 4. the credentials looked up in an in-memory cache keyed by the mapping (name and a hash of
//    its definition) and the identity (issuer, sub, account, project, deployment, environment,
//    scopes, audiences), as sts's cache_key. On a miss this calls the same emulators sts
//    calls (AWS_ENDPOINT_URL: AssumeRoleWithWebIdentity on moto; GCP_STS_URL and
//    GCP_IAM_CREDENTIALS_URL: the token exchange and generateAccessToken), once per key and
//    worker (concurrent misses share the call), and keeps the answer until the reuse margin
//    sts uses; no canned credentials. In the bench the misses happen before the measurement
//    (the first request and the warm-up load), so the measured requests all hit;
// 5. the answer rendered as sts renders it (RFC 8693 section 2.2.1 with the AWS
//    credential_process document), from a per-entry body split around expires_in;
// 6. a prom-client counter (sts_exchanges_total) and histogram (sts_exchange_duration_seconds,
//    sts's buckets) per request, their label children looked up once, as sts.metrics.answered;
// 7. one pino JSON access line per request (request id, method, path, status, latency, pid,
//    outcome, mapping, provider, deployment, cache_hit), written asynchronously in chunks to
//    standard output, which the bench sends to the server's log file as it does sts's.
//
// What it leaves out: sts's audit trail and Redis tier (neither is touched on a cached answer),
// JSON request bodies, audience/resource-named selection (the bench sends neither: such a
// request is answered invalid_target), Azure mappings, and sts's repeat-body shortcut
// (sts.exchange.Repeats) on the cached path: here a repeated token still has its body parsed
// and its mapping selected.

const cluster = require('node:cluster');
const crypto = require('node:crypto');
const fs = require('node:fs');
const { config, GRANT } = require('./common.js');

const settings = config();

if (cluster.isPrimary) {
  for (let i = 0; i < settings.workers; i += 1) {
    cluster.fork();
  }
  cluster.on('exit', (worker, code, signal) => {
    if (signal !== 'SIGTERM') {
      console.error(`worker ${worker.process.pid} exited (${signal || code})`);
    }
  });
  const stop = () => {
    for (const worker of Object.values(cluster.workers)) {
      worker.process.kill('SIGTERM');
    }
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
} else {
  worker();
}

function worker() {
  const { createRemoteJWKSet, jwtVerify } = require('jose');
  const fastify = require('fastify')({ logger: false });
  const promClient = require('prom-client');
  const pino = require('pino');

  const required = (name) => {
    const value = process.env[name];
    if (!value) {
      throw new Error(`${name} is required`);
    }
    return value;
  };
  const MAPPINGS_FILE = required('MAPPINGS_FILE');
  const AWS_ENDPOINT_URL = required('AWS_ENDPOINT_URL');
  const GCP_STS_URL = required('GCP_STS_URL');
  const GCP_IAM_CREDENTIALS_URL = required('GCP_IAM_CREDENTIALS_URL').replace(/\/+$/, '');

  // -- the protocol's constants (sts/protocol.py, sts/api/token.py, sts/identity/verifier.py)
  const ID_TOKEN = 'urn:ietf:params:oauth:token-type:id_token';
  const JWT = 'urn:ietf:params:oauth:token-type:jwt';
  const ACCESS_TOKEN = 'urn:ietf:params:oauth:token-type:access_token';
  const AWS_CREDENTIALS = 'urn:zuplo-sts:token-type:aws-credentials';
  const SUBJECT_TOKEN_TYPES = new Set([ID_TOKEN, JWT]);
  const FIELDS = new Set([
    'grant_type',
    'subject_token',
    'subject_token_type',
    'audience',
    'resource',
    'scope',
    'requested_token_type',
    'actor_token',
    'actor_token_type',
  ]);
  const MAX_BODY_BYTES = 64 * 1024;
  const MAX_FORM_FIELDS = 64;
  const MAX_TOKEN_BYTES = 16 * 1024;
  const LEEWAY_SECONDS = 60;
  const MAX_LIFETIME_SECONDS = 24 * 3600;
  const VERIFIED_CACHE_SIZE = 10000;
  const ENVIRONMENT_TYPES = new Set(['production', 'preview', 'development']);
  const IDENTITY_CLAIMS = ['sub', 'account', 'project', 'deployment', 'environment_type'];
  const FORBIDDEN_HEADERS = ['crit', 'b64', 'cty', 'enc', 'zip'];
  const ACCEPTED_TYP = new Set(['jwt', 'application/jwt']);
  const CLOUD_PLATFORM = 'https://www.googleapis.com/auth/cloud-platform';
  const IAM_SCOPE = CLOUD_PLATFORM;
  const ASCII = /^[\x00-\x7f]*$/;
  const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;
  const HEADERS = {
    'content-type': 'application/json',
    'cache-control': 'no-store',
    pragma: 'no-cache',
  };

  class OAuthError extends Error {
    constructor(status, error, description) {
      super(description);
      this.status = status;
      this.error = error;
      this.description = description;
    }
  }
  const invalidRequest = (description) => new OAuthError(400, 'invalid_request', description);

  // -- metrics (sts/metrics.py) ----------------------------------------------------------
  const exchanges = new promClient.Counter({
    name: 'sts_exchanges_total',
    help: 'Token exchanges answered, by outcome, provider and cache use.',
    labelNames: ['outcome', 'provider', 'cache'],
  });
  const exchangeSeconds = new promClient.Histogram({
    name: 'sts_exchange_duration_seconds',
    help: 'Time to answer POST /token, from request to response body.',
    labelNames: ['provider', 'cache'],
    buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
  });
  const children = new Map();
  function answered(outcome, provider, cache) {
    const key = `${outcome}\n${provider}\n${cache}`;
    let pair = children.get(key);
    if (pair === undefined) {
      pair = [exchanges.labels(outcome, provider, cache), exchangeSeconds.labels(provider, cache)];
      children.set(key, pair);
    }
    return pair;
  }

  // -- the access log (sts/api/__init__.py log_request) ----------------------------------
  const destination = pino.destination({ dest: 1, sync: false, minLength: 4096 });
  const accessLog = pino(
    {
      base: { logger: 'sts.access' },
      messageKey: 'msg',
      timestamp: () => `,"ts":"${new Date().toISOString()}"`,
      formatters: { level: (label) => ({ level: label }) },
    },
    destination,
  );
  const idPrefix = crypto.randomBytes(12).toString('hex');
  let idCounter = 0;
  function requestId(incoming) {
    if (typeof incoming === 'string' && REQUEST_ID.test(incoming)) {
      return incoming;
    }
    idCounter += 1;
    return idPrefix + idCounter.toString(16).padStart(8, '0');
  }

  // -- the mappings, indexed by account (sts/mappings/index.py) ----------------------------
  function globToRegExp(glob) {
    // Python's fnmatch.translate, case-sensitive: * ? [seq] [!seq]; an unclosed [ is literal.
    let out = '';
    let i = 0;
    while (i < glob.length) {
      const c = glob[i];
      i += 1;
      if (c === '*') {
        out += '.*';
        while (glob[i] === '*') {
          i += 1;
        }
      } else if (c === '?') {
        out += '.';
      } else if (c === '[') {
        let j = i;
        if (glob[j] === '!') {
          j += 1;
        }
        if (glob[j] === ']') {
          j += 1;
        }
        while (j < glob.length && glob[j] !== ']') {
          j += 1;
        }
        if (j >= glob.length) {
          out += '\\[';
        } else {
          let stuff = glob.slice(i, j).replace(/\\/g, '\\\\');
          i = j + 1;
          if (stuff[0] === '!') {
            stuff = `^${stuff.slice(1)}`;
          } else if (stuff[0] === '^') {
            stuff = `\\${stuff}`;
          }
          out += `[${stuff}]`;
        }
      } else {
        out += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
      }
    }
    return new RegExp(`^(?:${out})$`, 's');
  }

  const EXACT_DEPLOYMENT = 2;
  const GLOB_DEPLOYMENT = 1;
  const ANY_DEPLOYMENT = 0;

  function compile(doc) {
    const deployment = doc.deployment ?? '*';
    const environmentType = doc.environment_type ?? '*';
    const regex = deployment !== '*' && /[*?[]/.test(deployment) ? globToRegExp(deployment) : null;
    let deploymentRank = EXACT_DEPLOYMENT;
    if (deployment === '*') {
      deploymentRank = ANY_DEPLOYMENT;
    } else if (regex !== null) {
      deploymentRank = GLOB_DEPLOYMENT;
    }
    const provider = doc.aws ? 'aws' : doc.gcp ? 'gcp' : 'azure';
    const gcp = doc.gcp
      ? {
          workloadIdentityProvider: doc.gcp.workload_identity_provider,
          serviceAccount: doc.gcp.service_account ?? null,
          scopes: doc.gcp.scopes ?? [CLOUD_PLATFORM],
          lifetimeSeconds: doc.gcp.lifetime_seconds ?? 3600,
        }
      : null;
    const aws = doc.aws
      ? {
          roleArn: doc.aws.role_arn,
          durationSeconds: doc.aws.duration_seconds ?? 3600,
          sessionPolicy: doc.aws.session_policy ?? null,
        }
      : null;
    return {
      name: doc.name,
      account: doc.account,
      project: doc.project,
      deployment,
      environmentType,
      regex,
      enabled: doc.enabled !== false,
      // Compared in this order: deployment, environment, project (higher wins).
      rank: [deploymentRank, environmentType !== '*' ? 1 : 0, doc.project !== '*' ? 1 : 0],
      provider,
      aws,
      gcp,
      // What sts's MappingSpec.fingerprint is for: credentials of a redefined mapping are
      // never reused.
      fingerprint: crypto.createHash('sha256').update(JSON.stringify(doc)).digest('hex'),
    };
  }

  const byAccount = new Map();
  for (const doc of JSON.parse(fs.readFileSync(MAPPINGS_FILE, 'utf8'))) {
    const mapping = compile(doc);
    if (!mapping.enabled) {
      continue;
    }
    let list = byAccount.get(mapping.account);
    if (list === undefined) {
      list = [];
      byAccount.set(mapping.account, list);
    }
    list.push(mapping);
  }

  function binds(mapping, principal) {
    if (mapping.project !== '*' && mapping.project !== principal.project) {
      return false;
    }
    if (mapping.regex !== null) {
      if (!mapping.regex.test(principal.deployment)) {
        return false;
      }
    } else if (
      mapping.rank[0] === EXACT_DEPLOYMENT &&
      mapping.deployment !== principal.deployment
    ) {
      return false;
    }
    return mapping.environmentType === '*' || mapping.environmentType === principal.environmentType;
  }

  function compareRank(a, b) {
    for (let k = 0; k < 3; k += 1) {
      if (a[k] !== b[k]) {
        return a[k] - b[k];
      }
    }
    return 0;
  }

  function select(principal) {
    let best = null;
    let tie = null;
    for (const mapping of byAccount.get(principal.account) ?? []) {
      if (!binds(mapping, principal)) {
        continue;
      }
      const order = best === null ? 1 : compareRank(mapping.rank, best.rank);
      if (order > 0) {
        best = mapping;
        tie = null;
      } else if (order === 0 && tie === null) {
        tie = mapping;
      }
    }
    if (best === null) {
      throw new OAuthError(400, 'unauthorized_client', 'no mapping binds this identity');
    }
    if (tie !== null) {
      throw new OAuthError(
        400,
        'invalid_target',
        'several mappings bind this identity; choose one with audience or resource',
      );
    }
    return best;
  }

  // sts.mappings.index.check_request: the scopes granted, or a refusal.
  function checkRequest(mapping, scope, requestedTokenType) {
    const issued = mapping.aws ? AWS_CREDENTIALS : ACCESS_TOKEN;
    if (requestedTokenType && requestedTokenType !== issued) {
      throw new OAuthError(400, 'invalid_target', 'requested_token_type not available');
    }
    const requested = [...new Set((scope || '').split(' ').filter((t) => t))];
    if (mapping.gcp === null) {
      if (requested.length) {
        throw new OAuthError(400, 'invalid_scope', 'scope not allowed by the mapping');
      }
      return [];
    }
    if (!requested.length) {
      return mapping.gcp.scopes;
    }
    const allowed = mapping.gcp.serviceAccount
      ? mapping.gcp.scopes
      : [...mapping.gcp.scopes, IAM_SCOPE];
    for (const token of requested) {
      if (!allowed.includes(token)) {
        throw new OAuthError(400, 'invalid_scope', 'scope not allowed by the mapping');
      }
    }
    return requested;
  }

  // -- the request (sts/api/token.py) ----------------------------------------------------
  function formDecode(text) {
    if (text.includes('%') || text.includes('+')) {
      return decodeURIComponent(text.replace(/\+/g, ' '));
    }
    return text;
  }

  function parseForm(body) {
    if (!ASCII.test(body)) {
      throw invalidRequest('malformed request body');
    }
    const parts = body.split('&');
    if (parts.length > MAX_FORM_FIELDS) {
      throw invalidRequest('malformed request body');
    }
    const fields = new Map();
    for (const part of parts) {
      if (!part) {
        continue;
      }
      const eq = part.indexOf('=');
      let name;
      let value;
      try {
        name = formDecode(eq < 0 ? part : part.slice(0, eq));
        value = eq < 0 ? '' : formDecode(part.slice(eq + 1));
      } catch {
        throw invalidRequest('malformed request body');
      }
      if (fields.has(name) && FIELDS.has(name)) {
        throw invalidRequest(`repeated parameter ${name}`);
      }
      fields.set(name, value);
    }
    return fields;
  }

  function tokenRequest(body) {
    const fields = parseForm(body);
    // RFC 6749 section 3.1: a parameter sent without a value is treated as omitted.
    const value = (name) => fields.get(name) || undefined;
    const grantType = value('grant_type');
    if (grantType === undefined) {
      throw invalidRequest('missing grant_type');
    }
    if (grantType !== GRANT) {
      throw new OAuthError(400, 'unsupported_grant_type', 'grant_type not supported');
    }
    const subjectToken = value('subject_token');
    if (subjectToken === undefined) {
      throw invalidRequest('missing subject_token');
    }
    const subjectTokenType = value('subject_token_type');
    if (subjectTokenType === undefined) {
      throw invalidRequest('missing subject_token_type');
    }
    if (!SUBJECT_TOKEN_TYPES.has(subjectTokenType)) {
      throw invalidRequest('unsupported subject_token_type');
    }
    if (value('actor_token') !== undefined || value('actor_token_type') !== undefined) {
      throw invalidRequest('actor_token is not supported');
    }
    if (value('audience') !== undefined || value('resource') !== undefined) {
      // Named selection is not part of this comparator (the bench never sends it).
      throw new OAuthError(400, 'invalid_target', 'target not available to this identity');
    }
    return {
      subjectToken,
      scope: value('scope'),
      requestedTokenType: value('requested_token_type'),
    };
  }

  // -- the token (sts/identity/verifier.py) ----------------------------------------------
  const JWKS = createRemoteJWKSet(settings.jwksUrl);
  const verifyOptions = {
    issuer: settings.issuer,
    audience: settings.audience,
    algorithms: ['RS256'],
    clockTolerance: LEEWAY_SECONDS,
    requiredClaims: ['exp', 'iat'],
  };
  // sha256 of the token -> { principal, exp }; insertion order is the LRU order.
  const verified = new Map();

  function checkHeader(header) {
    for (const name of FORBIDDEN_HEADERS) {
      if (name in header) {
        throw invalidRequest('header not allowed');
      }
    }
    if ('typ' in header) {
      if (typeof header.typ !== 'string' || !ACCEPTED_TYP.has(header.typ.toLowerCase())) {
        throw invalidRequest('header not allowed');
      }
    }
    if (typeof header.kid !== 'string' || !header.kid) {
      throw invalidRequest('signing key not found');
    }
  }

  function principalOf(payload, now) {
    const { exp, iat } = payload;
    if (iat > now + LEEWAY_SECONDS) {
      throw invalidRequest('token issued in the future');
    }
    if (exp - iat > MAX_LIFETIME_SECONDS) {
      throw invalidRequest('token lifetime too long');
    }
    for (const name of IDENTITY_CLAIMS) {
      const claim = payload[name];
      if (typeof claim !== 'string' || !claim) {
        throw invalidRequest('claim missing or invalid');
      }
    }
    if (!ENVIRONMENT_TYPES.has(payload.environment_type)) {
      throw invalidRequest('claim missing or invalid');
    }
    const audiences = typeof payload.aud === 'string' ? [payload.aud] : [...payload.aud].sort();
    return {
      principal: {
        issuer: payload.iss,
        sub: payload.sub,
        account: payload.account,
        project: payload.project,
        deployment: payload.deployment,
        environmentType: payload.environment_type,
        audiences: audiences.join(' '),
      },
      exp,
    };
  }

  async function verify(token) {
    if (token.length > MAX_TOKEN_BYTES) {
      throw invalidRequest('token too large');
    }
    if (!ASCII.test(token)) {
      throw invalidRequest('token unparsable');
    }
    const now = Date.now() / 1000;
    const digest = crypto.createHash('sha256').update(token).digest('base64');
    const hit = verified.get(digest);
    if (hit !== undefined) {
      verified.delete(digest);
      if (now >= hit.exp + LEEWAY_SECONDS) {
        throw invalidRequest('token expired');
      }
      verified.set(digest, hit);
      return hit.principal;
    }
    let result;
    try {
      result = await jwtVerify(token, JWKS, verifyOptions);
    } catch (error) {
      if (error && error.code === 'ERR_JWKS_TIMEOUT') {
        throw new OAuthError(503, 'temporarily_unavailable', 'signing keys unavailable');
      }
      throw invalidRequest('token invalid');
    }
    checkHeader(result.protectedHeader);
    const entry = principalOf(result.payload, now);
    verified.set(digest, entry);
    if (verified.size > VERIFIED_CACHE_SIZE) {
      verified.delete(verified.keys().next().value);
    }
    return entry.principal;
  }

  // -- the credential cache (sts/cache.py) and the clouds on a miss ----------------------
  const MIN_REMAINING_SECONDS = 300;
  const MAX_MARGIN_SECONDS = 900;
  const CACHE_MAX_ENTRIES = 100000;
  const MARK = -7777777;
  const credentials = new Map();
  const inFlight = new Map();

  function cacheKey(mapping, principal, scopes) {
    return [
      mapping.name,
      mapping.fingerprint,
      principal.issuer,
      principal.sub,
      principal.account,
      principal.project,
      principal.deployment,
      principal.environmentType,
      [...scopes].sort().join(' '),
      principal.audiences,
    ].join('\n');
  }

  function iso8601(epoch) {
    return new Date(epoch * 1000).toISOString().replace(/\.\d{3}Z$/, 'Z');
  }

  // The rendered answer split around expires_in (sts.api.token._BodyCache).
  function renderParts(mapping, creds) {
    let doc;
    if (mapping.aws) {
      doc = {
        access_token: creds.sessionToken,
        issued_token_type: AWS_CREDENTIALS,
        token_type: 'N_A',
        expires_in: MARK,
        mapping: mapping.name,
        aws_credentials: {
          Version: 1,
          AccessKeyId: creds.accessKeyId,
          SecretAccessKey: creds.secretAccessKey,
          SessionToken: creds.sessionToken,
          Expiration: iso8601(creds.expiresAt),
        },
      };
    } else {
      doc = {
        access_token: creds.accessToken,
        issued_token_type: ACCESS_TOKEN,
        token_type: 'Bearer',
        expires_in: MARK,
      };
      if (creds.scope) {
        doc.scope = creds.scope;
      }
      doc.mapping = mapping.name;
    }
    const text = JSON.stringify(doc);
    const at = text.indexOf(String(MARK));
    return [text.slice(0, at), text.slice(at + String(MARK).length)];
  }

  function xmlField(xml, name) {
    const match = new RegExp(`<${name}>([^<]*)</${name}>`).exec(xml);
    if (match === null) {
      throw new OAuthError(503, 'temporarily_unavailable', 'aws: MalformedResponse');
    }
    return match[1].replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
  }

  function sessionName(deployment) {
    return deployment.replace(/[^A-Za-z0-9_+=,.@-]/gu, '-').slice(0, 64).padEnd(2, '-');
  }

  async function upstream(url, init) {
    let response;
    try {
      response = await fetch(url, { ...init, signal: AbortSignal.timeout(10000) });
    } catch {
      throw new OAuthError(503, 'temporarily_unavailable', 'upstream unreachable');
    }
    const text = await response.text();
    if (!response.ok) {
      throw new OAuthError(503, 'temporarily_unavailable', `upstream answered ${response.status}`);
    }
    return text;
  }

  async function issueAws(mapping, principal, token) {
    const params = new URLSearchParams({
      Action: 'AssumeRoleWithWebIdentity',
      Version: '2011-06-15',
      RoleArn: mapping.aws.roleArn,
      RoleSessionName: sessionName(principal.deployment),
      WebIdentityToken: token,
      DurationSeconds: String(mapping.aws.durationSeconds),
    });
    if (mapping.aws.sessionPolicy !== null) {
      params.set('Policy', JSON.stringify(mapping.aws.sessionPolicy));
    }
    const xml = await upstream(AWS_ENDPOINT_URL, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' },
      body: params.toString(),
    });
    return {
      accessKeyId: xmlField(xml, 'AccessKeyId'),
      secretAccessKey: xmlField(xml, 'SecretAccessKey'),
      sessionToken: xmlField(xml, 'SessionToken'),
      expiresAt: Date.parse(xmlField(xml, 'Expiration')) / 1000,
    };
  }

  async function issueGcp(mapping, token, scopes) {
    const gcp = mapping.gcp;
    const federated = JSON.parse(
      await upstream(GCP_STS_URL, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded' },
        body: new URLSearchParams({
          grant_type: GRANT,
          audience: gcp.workloadIdentityProvider,
          scope: (gcp.serviceAccount ? [IAM_SCOPE] : scopes).join(' '),
          requested_token_type: ACCESS_TOKEN,
          subject_token: token,
          subject_token_type: JWT,
        }).toString(),
      }),
    );
    if (!gcp.serviceAccount) {
      return {
        accessToken: federated.access_token,
        expiresAt: Date.now() / 1000 + federated.expires_in,
        scope: scopes.join(' '),
      };
    }
    const url =
      `${GCP_IAM_CREDENTIALS_URL}/v1/projects/-/serviceAccounts/` +
      `${encodeURIComponent(gcp.serviceAccount).replace(/%40/g, '@')}:generateAccessToken`;
    const answer = JSON.parse(
      await upstream(url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          authorization: `Bearer ${federated.access_token}`,
        },
        body: JSON.stringify({ scope: scopes, lifetime: `${gcp.lifetimeSeconds}s` }),
      }),
    );
    return {
      accessToken: answer.accessToken,
      expiresAt: Date.parse(answer.expireTime) / 1000,
      scope: scopes.join(' '),
    };
  }

  async function issue(key, mapping, principal, token, scopes) {
    const issuedAt = Date.now() / 1000;
    const creds = mapping.aws
      ? await issueAws(mapping, principal, token)
      : await issueGcp(mapping, token, scopes);
    const lifetime = creds.expiresAt - issuedAt;
    const margin = Math.max(MIN_REMAINING_SECONDS, Math.min(MAX_MARGIN_SECONDS, lifetime / 2));
    const entry = {
      expiresAt: creds.expiresAt,
      usableUntil: creds.expiresAt - margin,
      parts: renderParts(mapping, creds),
    };
    if (credentials.size >= CACHE_MAX_ENTRIES) {
      credentials.clear();
    }
    credentials.set(key, entry);
    return entry;
  }

  // The cached entry, or one upstream call per key (concurrent misses wait for the same one).
  async function credentialsFor(mapping, principal, token, scopes) {
    const key = cacheKey(mapping, principal, scopes);
    const entry = credentials.get(key);
    if (entry !== undefined && Date.now() / 1000 < entry.usableUntil) {
      return { entry, hit: true };
    }
    let flight = inFlight.get(key);
    if (flight === undefined) {
      flight = issue(key, mapping, principal, token, scopes).finally(() => inFlight.delete(key));
      inFlight.set(key, flight);
    }
    return { entry: await flight, hit: false };
  }

  // -- HTTP ------------------------------------------------------------------------------
  fastify.addContentTypeParser(
    'application/x-www-form-urlencoded',
    { parseAs: 'string', bodyLimit: MAX_BODY_BYTES },
    (request, body, done) => done(null, body),
  );

  fastify.post('/token', async (request, reply) => {
    const started = performance.now();
    const id = requestId(request.headers['x-request-id']);
    const fields = {};
    let status = 200;
    let body;
    try {
      if (typeof request.body !== 'string') {
        throw invalidRequest('content type must be application/x-www-form-urlencoded');
      }
      const exchange = tokenRequest(request.body);
      const principal = await verify(exchange.subjectToken);
      const mapping = select(principal);
      const scopes = checkRequest(mapping, exchange.scope, exchange.requestedTokenType);
      const { entry, hit } = await credentialsFor(
        mapping,
        principal,
        exchange.subjectToken,
        scopes,
      );
      const expiresIn = Math.max(0, Math.floor(entry.expiresAt - Date.now() / 1000));
      body = entry.parts[0] + expiresIn + entry.parts[1];
      const cache = hit ? 'hit' : 'miss';
      const [counted, timed] = answered('ok', mapping.provider, cache);
      counted.inc();
      timed.observe((performance.now() - started) / 1000);
      fields.outcome = 'ok';
      fields.mapping = mapping.name;
      fields.provider = mapping.provider;
      fields.deployment = principal.deployment;
      fields.cache_hit = hit;
    } catch (error) {
      const oauth =
        error instanceof OAuthError
          ? error
          : new OAuthError(500, 'server_error', 'internal error');
      exchanges.labels(oauth.error, 'none', 'none').inc();
      status = oauth.status;
      body = JSON.stringify({ error: oauth.error, error_description: oauth.description });
      fields.outcome = oauth.error;
      fields.reason = oauth.description;
    }
    accessLog.info(
      {
        request_id: id,
        method: 'POST',
        path: '/token',
        status,
        latency_ms: Math.round((performance.now() - started) * 1000) / 1000,
        pid: process.pid,
        ...fields,
      },
      'request',
    );
    reply.code(status).headers(HEADERS).header('x-request-id', id);
    return body;
  });

  fastify.get('/healthz', async () => ({ status: 'ok' }));

  // This worker's metrics (sts serve aggregates its workers'; not needed for the comparison).
  fastify.get('/metrics', async (request, reply) => {
    reply.header('content-type', promClient.register.contentType);
    return promClient.register.metrics();
  });

  const stop = () => {
    destination.flushSync();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  fastify.listen({ host: '127.0.0.1', port: settings.port }).catch((error) => {
    console.error(error);
    process.exit(1);
  });
}
