/**
 * zuplo-sts client for Zuplo request handlers: exchanges the gateway's Zuplo ID token for cloud
 * credentials at `POST /token` (RFC 8693 token exchange) and keeps the answer in memory until
 * five minutes before it expires.
 *
 * Put this file in your Zuplo project as `modules/sts-client.ts`.
 *
 * Environment variables (Zuplo portal: Settings > Environment Variables):
 *   STS_URL       base URL of zuplo-sts, e.g. https://sts.example.com
 *   STS_AUDIENCE  the audience to ask Zuplo for: one of the service's STS_AUDIENCE values
 */
import { environment, ZuploContext, ZuploServices } from "@zuplo/runtime";

const GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token";
/** Never hand out credentials with less than this left (the service refreshes earlier). */
const REUSE_MARGIN_MS = 5 * 60 * 1000;

/** An AWS `credential_process` document, as the service returns it. */
export interface AwsCredentials {
  Version: 1;
  AccessKeyId: string;
  SecretAccessKey: string;
  SessionToken: string;
  Expiration: string;
}

export interface AwsAnswer {
  access_token: string;
  issued_token_type: "urn:zuplo-sts:token-type:aws-credentials";
  token_type: "N_A";
  expires_in: number;
  mapping: string;
  aws_credentials: AwsCredentials;
}

export interface GcpAnswer {
  access_token: string;
  issued_token_type: "urn:ietf:params:oauth:token-type:access_token";
  token_type: "Bearer";
  expires_in: number;
  scope: string;
  mapping: string;
}

/** What to ask for. Both fields are needed only when several mappings bind this deployment. */
export interface ExchangeRequest {
  /** A mapping name (the request's `audience` field; not the ID token's audience). */
  mapping?: string;
  /** The target itself: an AWS role ARN or a GCP service-account email. */
  resource?: string;
  /** GCP only: space-separated scopes, each allowed by the mapping. */
  scope?: string;
}

/** The service refused or could not answer; `code` is the OAuth error code. */
export class StsError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly description: string,
    /** Seconds, from `Retry-After` on 503 `temporarily_unavailable`. */
    readonly retryAfter?: number,
  ) {
    super(`zuplo-sts: ${status} ${code}: ${description}`);
    this.name = "StsError";
  }
}

interface Entry {
  answer: Promise<AwsAnswer | GcpAnswer>;
  /** Epoch milliseconds after which the entry must not be used; Infinity while in flight. */
  reuseUntil: number;
}

// Per isolate. Concurrent requests for the same key share one exchange (the promise is cached).
const cache = new Map<string, Entry>();

function required(name: string): string {
  const value = environment[name];
  if (!value) {
    throw new Error(`environment variable ${name} is not set`);
  }
  return value;
}

async function post(
  context: ZuploContext,
  request: ExchangeRequest,
): Promise<AwsAnswer | GcpAnswer> {
  const idToken = await ZuploServices.getIDToken(context, {
    audience: required("STS_AUDIENCE"),
  });
  const body = new URLSearchParams({
    grant_type: GRANT_TYPE,
    subject_token: idToken,
    subject_token_type: ID_TOKEN,
  });
  if (request.mapping) body.set("audience", request.mapping);
  if (request.resource) body.set("resource", request.resource);
  if (request.scope) body.set("scope", request.scope);

  const response = await fetch(new URL("/token", required("STS_URL")), {
    method: "POST",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      accept: "application/json",
      // The service echoes it in its log line and its X-Request-Id header.
      "x-request-id": context.requestId,
    },
    body,
  });
  if (response.ok) {
    return (await response.json()) as AwsAnswer | GcpAnswer;
  }
  let code = "server_error";
  let description = `HTTP ${response.status}`;
  try {
    const problem = (await response.json()) as { error?: string; error_description?: string };
    code = problem.error ?? code;
    description = problem.error_description ?? description;
  } catch {
    // Not JSON (a proxy in between): keep the status.
  }
  const retryAfter = Number(response.headers.get("retry-after") ?? Number.NaN);
  throw new StsError(
    response.status,
    code,
    description,
    Number.isFinite(retryAfter) ? retryAfter : undefined,
  );
}

/** Credentials for this deployment, from the cache or a new exchange. */
export async function exchange(
  context: ZuploContext,
  request: ExchangeRequest = {},
): Promise<AwsAnswer | GcpAnswer> {
  const key = JSON.stringify([request.mapping ?? "", request.resource ?? "", request.scope ?? ""]);
  const now = Date.now();
  const cached = cache.get(key);
  if (cached && cached.reuseUntil > now) {
    return cached.answer;
  }
  const entry: Entry = { answer: post(context, request), reuseUntil: Number.POSITIVE_INFINITY };
  cache.set(key, entry);
  try {
    const answer = await entry.answer;
    entry.reuseUntil = now + answer.expires_in * 1000 - REUSE_MARGIN_MS;
    return answer;
  } catch (error) {
    cache.delete(key);
    throw error;
  }
}

export async function awsCredentials(
  context: ZuploContext,
  request: ExchangeRequest = {},
): Promise<AwsCredentials> {
  const answer = await exchange(context, request);
  if (!("aws_credentials" in answer)) {
    throw new Error(`mapping ${answer.mapping} issues ${answer.issued_token_type}, not AWS`);
  }
  return answer.aws_credentials;
}

export async function gcpAccessToken(
  context: ZuploContext,
  request: ExchangeRequest = {},
): Promise<string> {
  const answer = await exchange(context, request);
  if (answer.token_type !== "Bearer") {
    throw new Error(`mapping ${answer.mapping} issues ${answer.issued_token_type}, not GCP`);
  }
  return answer.access_token;
}
