/**
 * Zuplo request handler: calls a private Cloud Run service with a Google-signed ID token from
 * zuplo-sts (docs/reference.md, "GCP ID tokens"). Cloud Run, Cloud Functions and
 * Identity-Aware Proxy take ID tokens, not access tokens; the mapping's service account has
 * roles/run.invoker on the service (deploy/terraform/modules/gcp, `cloud_run_service`) and its
 * gcp.id_token_audiences lists the URL.
 *
 * Route (routes.oas.json): GET /orders/{orderId}, handler `default` from this module.
 *
 * Environment variables, besides sts-client.ts's STS_URL and STS_AUDIENCE:
 *   CLOUD_RUN_URL  the service's URL, e.g. https://orders-abc123-uc.a.run.app: one of the
 *                  mapping's gcp.id_token_audiences, sent as the exchange's `resource`
 *   STS_MAPPING    optional: the mapping name, needed only when several mappings bind the
 *                  deployment and none lists CLOUD_RUN_URL alone
 */
import {
  environment,
  HttpProblems,
  ZuploContext,
  ZuploRequest,
  ZuploServices,
} from "@zuplo/runtime";
import { StsError } from "./sts-client";

const GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN = "urn:ietf:params:oauth:token-type:id_token";
/** Never use an ID token with less than this left (the service refreshes earlier). */
const REUSE_MARGIN_MS = 5 * 60 * 1000;

/** The service's answer to `requested_token_type=urn:ietf:params:oauth:token-type:id_token`. */
export interface IdTokenAnswer {
  /** The Google-signed ID token: `aud` is the requested audience, `email` the service account. */
  access_token: string;
  issued_token_type: "urn:ietf:params:oauth:token-type:id_token";
  token_type: "N_A";
  expires_in: number;
  mapping: string;
}

interface Entry {
  answer: Promise<IdTokenAnswer>;
  /** Epoch milliseconds after which the entry must not be used; Infinity while in flight. */
  reuseUntil: number;
}

// Per isolate, per audience and mapping; concurrent requests share one exchange.
const cache = new Map<string, Entry>();

function required(name: string): string {
  const value = environment[name];
  if (!value) {
    throw new Error(`environment variable ${name} is not set`);
  }
  return value;
}

async function requestIdToken(
  context: ZuploContext,
  audience: string,
  mapping: string | undefined,
): Promise<IdTokenAnswer> {
  const zuploToken = await ZuploServices.getIDToken(context, {
    audience: required("STS_AUDIENCE"),
  });
  const body = new URLSearchParams({
    grant_type: GRANT_TYPE,
    subject_token: zuploToken,
    subject_token_type: ID_TOKEN,
    requested_token_type: ID_TOKEN,
  });
  // `resource` names the audience (it may be left out when the mapping lists only one).
  body.set("resource", audience);
  if (mapping) body.set("audience", mapping);

  const response = await fetch(new URL("/token", required("STS_URL")), {
    method: "POST",
    headers: {
      "content-type": "application/x-www-form-urlencoded",
      accept: "application/json",
      "x-request-id": context.requestId,
    },
    body,
  });
  if (response.ok) {
    const answer = (await response.json()) as IdTokenAnswer;
    if (answer.issued_token_type !== ID_TOKEN) {
      throw new Error(`mapping ${answer.mapping} issued ${answer.issued_token_type}`);
    }
    return answer;
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

/** An ID token for `audience` (a Cloud Run URL), from the cache or a new exchange. */
export async function gcpIdToken(
  context: ZuploContext,
  audience: string,
  mapping?: string,
): Promise<string> {
  const key = JSON.stringify([audience, mapping ?? ""]);
  const now = Date.now();
  const cached = cache.get(key);
  if (cached && cached.reuseUntil > now) {
    return (await cached.answer).access_token;
  }
  const entry: Entry = {
    answer: requestIdToken(context, audience, mapping),
    reuseUntil: Number.POSITIVE_INFINITY,
  };
  cache.set(key, entry);
  try {
    const answer = await entry.answer;
    entry.reuseUntil = now + answer.expires_in * 1000 - REUSE_MARGIN_MS;
    return answer.access_token;
  } catch (error) {
    cache.delete(key);
    throw error;
  }
}

export default async function (request: ZuploRequest, context: ZuploContext): Promise<Response> {
  const serviceUrl = required("CLOUD_RUN_URL");
  const orderId = request.params.orderId;
  if (!orderId || !/^[A-Za-z0-9-]{1,64}$/.test(orderId)) {
    return HttpProblems.badRequest(request, context, { detail: "invalid order id" });
  }

  let idToken: string;
  try {
    idToken = await gcpIdToken(context, serviceUrl, environment.STS_MAPPING);
  } catch (error) {
    if (error instanceof StsError) {
      context.log.error(`zuplo-sts refused: ${error.status} ${error.code}: ${error.description}`);
      if (error.status === 503) {
        return HttpProblems.serviceUnavailable(request, context, undefined, {
          "retry-after": String(error.retryAfter ?? 5),
        });
      }
      return HttpProblems.badGateway(request, context);
    }
    throw error;
  }

  // The ID token goes to the service whose URL is its audience, and nowhere else.
  const response = await fetch(new URL(`/orders/${encodeURIComponent(orderId)}`, serviceUrl), {
    headers: { authorization: `Bearer ${idToken}` },
  });
  if (response.status === 404) {
    return HttpProblems.notFound(request, context);
  }
  if (!response.ok) {
    context.log.error(`Cloud Run call failed: ${response.status}`);
    return HttpProblems.badGateway(request, context);
  }
  return new Response(response.body, {
    status: 200,
    headers: { "content-type": response.headers.get("content-type") ?? "application/json" },
  });
}
