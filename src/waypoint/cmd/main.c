/* waypoint: zmesh's L7 proxy (src/waypoint/README.md). Under construction: the data path lands in steps. */
#include <stdio.h>

int main(void)
{
    fprintf(stderr, "waypoint: not built yet\n");
    return 1;
}
