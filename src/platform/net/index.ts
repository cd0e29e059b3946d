export { canonicalAddress, isPublicAddress, refusalForAddress } from "./address.ts";
export {
  createOutboundClient,
  type OutboundClient,
  OutboundError,
  OutboundFailed,
  type OutboundOptions,
  type OutboundRefusalReason,
  OutboundRefused,
  type OutboundRequest,
  type OutboundResponse,
  type ResolvedAddress,
  type Resolver,
  type SendInfo,
} from "./outbound.ts";
