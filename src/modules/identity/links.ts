/**
 * Links to pages of the web app, under PUBLIC_URL (which may have a path). A token travels in the fragment:
 * a mail scanner or a terminal's link preview that fetches the URL never sends the fragment, so it cannot use
 * the token up; the page POSTs it when the user clicks.
 */
export function pageLink(publicUrl: URL, page: string, token?: string): string {
  const base = new URL(page.replace(/^\//, ""), publicUrl.href.endsWith("/") ? publicUrl : `${publicUrl.href}/`);
  if (token !== undefined) base.hash = `token=${token}`;
  return base.href;
}
